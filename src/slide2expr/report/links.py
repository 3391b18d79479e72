"""Links from the report page to the other outputs of the run: heatmaps, QC, the viewer.

The page sits at ``{results}/report/{head}/index.html`` (``{results}`` is ``results`` or,
in an encoder sweep, ``results/{encoder}``); the heatmaps of a gene on a slide are
``{results}/heatmaps/{head}/{sample}/{gene_filename}.png``, the QC images
``results/qc/{sample}.png`` and the viewer ``{results}/viewer/index.html``. All links are
relative, so the folder can be moved or zipped as a whole.

The page links only files that exist when it is written: a link (or a script probe) to a
picture never drawn is a console error when the page opens, one per missing file (342 on a
785-gene report before). The workflow writes the report *before* the heatmaps (they draw the
report's best genes), so there the heatmaps are reached through each gene's viewer link and
the ``heatmaps`` folder of each slide; rerunning ``slide2expr report`` after the heatmaps
links every PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from slide2expr.draw.names import gene_filename
from slide2expr.keys import split_unit

#: The viewer page relative to the report page (``{results}/viewer/index.html``).
VIEWER = "../../viewer/index.html"


@dataclass
class ReportLinks:
    """Where the page's links point.

    Attributes
    ----------
    samples
        Sample IDs of the predictions (the slides a heatmap may exist for).
    heatmaps
        URL of ``heatmaps/{head}`` relative to the page.
    present
        ``{gene: [sample, ...]}`` whose heatmap PNG existed when the page was written.
    qc
        ``{sample: URL}`` of QC images that exist.
    folders
        Samples whose heatmap folder existed when the page was written.
    viewer
        URL of the viewer page (``#gene=G`` is added per gene); empty for none.
    """

    samples: list[str]
    heatmaps: str
    present: dict[str, list[str]] = field(default_factory=dict)
    qc: dict[str, str] = field(default_factory=dict)
    viewer: str = VIEWER
    folders: list[str] = field(default_factory=list)

    def heatmap_href(self, sample: str, gene: str) -> str:
        """URL of one heatmap PNG."""
        return f"{self.heatmaps}/{quote(sample, safe='')}/{gene_filename(gene)}.png"



def viewer_href(gene: str, viewer: str = VIEWER) -> str:
    """URL of the slide viewer opened at ``gene`` (URL-quoted)."""
    return f"{viewer}#gene={quote(str(gene), safe='')}"


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def find_links(out_dir: str | Path, *, head: str, samples: Sequence[str],
               genes: Sequence[str], viewer: str = VIEWER) -> ReportLinks:
    """The links of a report written to ``out_dir`` (``{results}/report/{head}``).

    Parameters
    ----------
    out_dir
        The report's folder.
    head
        The head's name (``heatmaps/{head}``).
    samples
        Sample IDs (``;``-joined IDs of averaged bulk units are split).
    genes
        Genes of the report.
    viewer
        The viewer page relative to the report page.
    """
    out = Path(out_dir).resolve()
    results = out.parent.parent
    ids = list(dict.fromkeys(s for v in samples for s in split_unit(v)))
    heat_dir = results / "heatmaps" / head
    present: dict[str, list[str]] = {}
    if heat_dir.is_dir():
        for gene in genes:
            name = f"{gene_filename(gene)}.png"
            found = [s for s in ids if (heat_dir / s / name).is_file()]
            if found:
                present[str(gene)] = found
    qc: dict[str, str] = {}
    for qc_dir in (results / "qc", results.parent / "qc"):
        if qc_dir.is_dir():
            qc = {s: _relative(qc_dir / f"{s}.png", out) for s in ids
                  if (qc_dir / f"{s}.png").is_file()}
            break
    folders = [s for s in ids if (heat_dir / s).is_dir()]
    return ReportLinks(samples=ids, heatmaps=_relative(heat_dir, out), present=present, qc=qc,
                       viewer=viewer, folders=folders)
