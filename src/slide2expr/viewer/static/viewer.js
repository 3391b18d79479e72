/* slide2expr viewer: OpenSeadragon + predicted-expression layers.
 * Data arrive as scripts (data.js, slides/{id}/slide.js, slides/{id}/genes/{gene}.js) that
 * call S2E.data / S2E.slide / S2E.gene, so the page works from file:// and over HTTP.
 * Gene layers are 8-bit PNGs at tile resolution (0 = no tile, 1..255 = lo..hi), coloured here.
 */
var S2E = (function () {
  'use strict';
  var DZ_NS = 'http://schemas.microsoft.com/deepzoom/2008';
  var FADE_TO = 0.3;     // normalised value at which the colour becomes fully opaque
  var MAX_LAYER_PX = 2048;
  var st = {
    data: null, slide: null, detail: {}, gene: null, genes: {}, layers: {}, pending: {},
    viewer: null, base: null, mapItem: null, mapKey: null, levels: {}, baseLoaded: false,
    painted: null, cellIndex: null, luts: {}, decoded: {}, renders: 0, marks: {},
    split: false, viewer2: null, base2: null, mapViewer: null, hover: null, syncing: false
  };
  function mark(name) { if (st.marks[name] === undefined) st.marks[name] = Math.round(performance.now()); }
  function $(id) { return document.getElementById(id); }
  function note(text) { var n = $('note'); n.textContent = text || ''; n.hidden = !text; }
  function fmt(v) { return v === null || v === undefined || isNaN(v) ? 'n/a' : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)); }
  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; }); }

  function loadScript(src, onerror) {
    var s = document.createElement('script');
    s.src = src;
    s.onerror = function () { onerror(src); };
    document.head.appendChild(s);
  }
  function b64bytes(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function geneFile(name) {
    var g = st.genes[name];
    return g ? g.file : null;
  }
  function setReady(flag) {
    document.body.setAttribute('data-ready', flag ? '1' : '0');
    // ms from navigation start to the first complete view (H&E + layer), for benchmarks
    if (flag && st.firstPaintMs === undefined) st.firstPaintMs = Math.round(performance.now());
  }

  // ------------------------------------------------------------------ hash (deep links)
  function parseHash() {
    var out = {};
    (window.location.hash || '').replace(/^#/, '').split('&').forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf('=');
      var k = decodeURIComponent(i < 0 ? kv : kv.slice(0, i));
      out[k] = i < 0 ? '' : decodeURIComponent(kv.slice(i + 1).replace(/\+/g, ' '));
    });
    return out;
  }
  function writeHash() {
    var h = '#slide=' + encodeURIComponent(st.slide.id) + '&gene=' + encodeURIComponent(st.gene);
    if (history.replaceState) {
      try { history.replaceState(null, '', h); return; } catch (e) { /* file:// quirks */ }
    }
  }

  // ------------------------------------------------------------------ colour
  function lut(name) {
    if (!st.luts[name]) {
      var hex = st.data.colormaps[name], a = new Uint8Array(768);
      for (var i = 0; i < 768; i++) a[i] = parseInt(hex.substr(2 * i, 2), 16);
      st.luts[name] = a;
    }
    return st.luts[name];
  }
  function control(name) {
    var el = document.querySelector('input[name=' + name + ']:checked');
    return el ? el.value : null;
  }
  function limits(layer) {
    if (control('map') === 'uncertainty' && layer.spread) return [layer.spread.lo, layer.spread.hi];
    if (control('scale') === 'cohort') return st.data.cohort_limits[st.gene];
    return layer.slide_limits;
  }
  function colourOf(v, lim, table, fade) {
    var t = (v - lim[0]) / (lim[1] - lim[0]);
    t = t < 0 ? 0 : (t > 1 ? 1 : t);
    var k = Math.round(t * 255) * 3;
    var a = fade ? Math.min(1, t / FADE_TO) : 1;
    return [table[k], table[k + 1], table[k + 2], a];
  }
  function drawLegend(lim, label, ids, noFade) {
    ids = ids || ['legend-bar', 'legend-min', 'legend-max', 'legend-label'];
    var c = $(ids[0]), ctx = c.getContext('2d'), table = lut($('cmap').value);
    var fade = $('fade').checked && !noFade;
    ctx.clearRect(0, 0, c.width, c.height);
    for (var i = 0; i < 256; i++) {
      var a = fade ? Math.min(1, (i / 255) / FADE_TO) : 1;
      ctx.fillStyle = 'rgba(' + table[3 * i] + ',' + table[3 * i + 1] + ',' + table[3 * i + 2] + ',' + a + ')';
      ctx.fillRect(i, 0, 1, c.height);
    }
    $(ids[1]).textContent = '\u2264 ' + fmt(lim[0]);
    $(ids[2]).textContent = '\u2265 ' + fmt(lim[1]);
    $(ids[3]).textContent = label;
  }
  // measured values at the spots have their own scale: this slide's measured range
  function measuredLimits(layer) { return [layer.spots.mlo, layer.spots.mhi]; }
  function showingSpots() { return st.split || $('spots').checked; }
  function drawMeasuredLegend(layer) {
    var box = $('legend-measured'), on = showingSpots() && layer && layer.spots;
    box.hidden = !on;
    if (!on) return;
    drawLegend(measuredLimits(layer), 'measured ' + st.gene + ' at the spots, ' + st.data.units +
      ' (this slide\'s measured range; its own scale, not the map\'s)',
      ['legend-m-bar', 'legend-m-min', 'legend-m-max', 'legend-m-label'], true);
  }

  // ------------------------------------------------------------------ gene layers
  function decode(key, b64png, cb) {
    if (st.decoded[key]) { cb(st.decoded[key]); return; }
    var img = new Image();
    img.onload = function () {
      var c = document.createElement('canvas');
      c.width = img.width; c.height = img.height;
      var ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      var px = ctx.getImageData(0, 0, img.width, img.height).data;
      var codes = new Uint8Array(img.width * img.height);
      for (var i = 0; i < codes.length; i++) codes[i] = px[4 * i];
      st.decoded[key] = { codes: codes, w: img.width, h: img.height };
      cb(st.decoded[key]);
    };
    img.onerror = function () { console.error('slide2expr: cannot decode layer ' + key); };
    img.src = 'data:image/png;base64,' + b64png;
  }
  function withGene(slideId, gene, cb) {
    var key = slideId + '\u0000' + gene;
    if (st.layers[key]) { cb(st.layers[key]); return; }
    if (st.pending[key]) { st.pending[key].push(cb); return; }
    st.pending[key] = [cb];
    loadScript('slides/' + encodeURIComponent(slideId) + '/genes/' + encodeURIComponent(geneFile(gene)) + '.js',
      function (src) { note('Cannot load ' + src + ': rebuild the viewer (slide2expr view).'); console.error('slide2expr: cannot load ' + src); });
  }
  function currentSource(layer) {
    if (control('map') === 'uncertainty') return layer.spread ? { png: layer.spread.png, lo: layer.spread.lo, hi: layer.spread.hi, kind: 'spread' } : null;
    if (control('map') === 'off') return null;
    return { png: layer.png, lo: layer.lo, hi: layer.hi, kind: 'predicted' };
  }
  function renderMap() {
    var slide = st.slide, gene = st.gene;
    withGene(slide.id, gene, function (layer) {
      if (slide !== st.slide || gene !== st.gene) return;
      var src = currentSource(layer), lim = limits(layer);
      var what = control('map') === 'uncertainty' ? 'uncertainty: SD of the averaged models, calibrated on inner validation by default (train.spread)' : 'predicted ' + gene;
      var how = control('map') === 'uncertainty' ? 'layer range' :
        (control('scale') === 'cohort' ? 'cohort-wide scale' : 'per-slide scale, ' + st.data.clip_percentiles.join('\u2013') + 'th percentiles');
      $('legend').hidden = !src;
      if (src) drawLegend(lim, what + ', ' + st.data.units + ' (' + how + ')');
      drawMeasuredLegend(layer);
      updateCurrent(layer);
      drawOverlay();
      decodeForReadout(slide, gene, layer);
      if (!src) { removeMap(); finishPaint(); return; }
      var key = [slide.id, gene, src.kind].join('\u0000');
      decode(key, src.png, function (dec) {
        if (slide !== st.slide || gene !== st.gene) return;
        var url = colourise(dec, src, lim);
        var g = slide.grid;
        var mapKey = key + '|' + $('cmap').value + '|' + lim.join(',') + '|' + $('fade').checked;
        var target = st.split ? st.viewer2 : st.viewer;
        target.addSimpleImage({
          url: url, x: 0, y: 0, width: (g.cols * g.step) / slide.width,
          opacity: $('opacity').value / 100,
          success: function (ev) {
            if (slide !== st.slide || target !== (st.split ? st.viewer2 : st.viewer)) {
              target.world.removeItem(ev.item); return;
            }
            removeMap();
            st.mapItem = ev.item; st.mapKey = mapKey; st.mapViewer = target; st.renders++;
            finishPaint();
          }
        });
      });
    });
  }
  function removeMap() {
    if (st.mapItem) { (st.mapViewer || st.viewer).world.removeItem(st.mapItem); st.mapItem = null; st.mapKey = null; }
  }
  function decodeForReadout(slide, gene, layer) {
    // the readout needs the predicted values (and the spread, when the model has one)
    // whichever layer is shown
    decode([slide.id, gene, 'predicted'].join('\u0000'), layer.png, function () { refreshReadout(); });
    if (layer.spread) decode([slide.id, gene, 'spread'].join('\u0000'), layer.spread.png, function () { refreshReadout(); });
  }
  function finishPaint() {
    mark('layer_painted');
    st.painted = st.slide.id + '/' + st.gene + '/' + control('map') + (st.split ? '/split' : '');
    if (st.baseLoaded) setReady(true);
    refreshReadout();
  }
  function colourise(dec, src, lim) {
    var table = lut($('cmap').value), fade = $('fade').checked;
    var small = document.createElement('canvas');
    small.width = dec.w; small.height = dec.h;
    var ctx = small.getContext('2d'), img = ctx.createImageData(dec.w, dec.h), d = img.data;
    var span = (src.hi - src.lo) / 254;
    for (var i = 0; i < dec.codes.length; i++) {
      var q = dec.codes[i];
      if (q === 0) { d[4 * i + 3] = 0; continue; }
      var c = colourOf(src.lo + (q - 1) * span, lim, table, fade);
      d[4 * i] = c[0]; d[4 * i + 1] = c[1]; d[4 * i + 2] = c[2]; d[4 * i + 3] = Math.round(255 * c[3]);
    }
    ctx.putImageData(img, 0, 0);
    // nearest-neighbour upscale, so tiles stay crisp squares when OpenSeadragon smooths
    var f = Math.max(1, Math.floor(MAX_LAYER_PX / Math.max(dec.w, dec.h)));
    var big = document.createElement('canvas');
    big.width = dec.w * f; big.height = dec.h * f;
    var bctx = big.getContext('2d');
    bctx.imageSmoothingEnabled = false;
    bctx.drawImage(small, 0, 0, big.width, big.height);
    return big.toDataURL('image/png');
  }
  function updateCurrent(layer) {
    var g = st.genes[st.gene], r = g && g.r !== null ? 'r = ' + g.r.toFixed(3) : 'r not in the report';
    var extra = layer.spots && layer.spots.r !== null ? '; measured vs predicted at this slide\'s spots r = ' + layer.spots.r.toFixed(2) : '';
    $('current').innerHTML = esc(st.gene) + ' <span class="r">(' + esc(r) + extra + ')</span>';
    $('current').setAttribute('data-gene', st.gene);
    $('map-uncertainty').disabled = !layer.spread;
    $('map-uncertainty').parentNode.title = layer.spread ? '' :
      'Not available: this model gives one prediction per tile (no ensemble or fold spread in the tile map).';
  }

  // ------------------------------------------------------------------ overlay: outline, spots
  function drawOverlay() {
    drawPane($('overlay'), st.base, showingSpots());
    if (st.split) drawPane($('overlay2'), st.base2, false);
    if (st.base && st.slide) drawScaleBar();
  }
  function drawPane(c, base, withSpots) {
    // a canvas takes its size from its width/height attributes: one pane of the stage
    var stage = $('stage'), w = st.split ? Math.floor(stage.clientWidth / 2) : stage.clientWidth;
    if (c.width !== w || c.height !== stage.clientHeight) {
      c.width = w; c.height = stage.clientHeight;
    }
    var ctx = c.getContext('2d');
    ctx.clearRect(0, 0, c.width, c.height);
    if (!base || !st.slide) return;
    var det = st.detail[st.slide.id];
    if (!det) return;
    function pt(x, y) { return base.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y)); }
    if ($('outline').checked && det.outline) {
      ctx.lineWidth = 2; ctx.strokeStyle = 'rgba(0,160,200,0.9)'; ctx.setLineDash([6, 4]);
      det.outline.forEach(function (poly) {
        poly.forEach(function (ring) {
          ctx.beginPath();
          ring.forEach(function (p, i) { var q = pt(p[0], p[1]); if (i) ctx.lineTo(q.x, q.y); else ctx.moveTo(q.x, q.y); });
          ctx.closePath(); ctx.stroke();
        });
      });
      ctx.setLineDash([]);
    }
    var layer = st.layers[st.slide.id + '\u0000' + st.gene];
    if (withSpots && det.spots && layer && layer.spots) {
      var table = lut($('cmap').value), lim = measuredLimits(layer);
      var vals = spotValues(layer, 'measured');
      var rad = Math.max(2, pt(det.spots.diameter / 2, 0).x - pt(0, 0).x);
      ctx.lineWidth = 1; ctx.strokeStyle = 'rgba(0,0,0,0.8)';
      det.spots.centres.forEach(function (xy, i) {
        var q = pt(xy[0], xy[1]);
        if (q.x < -rad || q.y < -rad || q.x > c.width + rad || q.y > c.height + rad) return;
        ctx.beginPath(); ctx.arc(q.x, q.y, rad, 0, 2 * Math.PI);
        if (vals[i] === null) { ctx.stroke(); return; }
        var col = colourOf(vals[i], lim, table, false);
        ctx.fillStyle = 'rgb(' + col[0] + ',' + col[1] + ',' + col[2] + ')';
        ctx.fill(); ctx.stroke();
      });
    }
  }
  function spotValues(layer, which) {
    var s = layer.spots, k = which + 'Values';
    if (!s[k]) {
      var codes = b64bytes(which === 'measured' ? s.measured : s.predicted);
      var lo = which === 'measured' ? s.mlo : s.plo, hi = which === 'measured' ? s.mhi : s.phi;
      s[k] = Array.prototype.map.call(codes, function (q) { return q === 0 ? null : lo + (q - 1) * (hi - lo) / 254; });
    }
    return s[k];
  }
  function drawScaleBar() {
    var bar = $('scalebar');
    if (!st.slide.mpp) { bar.hidden = true; return; }
    bar.hidden = false;
    var zoom = st.base.viewportToImageZoom(st.viewer.viewport.getZoom(true)); // screen px per slide px
    var umPerPx = st.slide.mpp / zoom, target = 120 * umPerPx;
    var e = Math.pow(10, Math.floor(Math.log10(target))), len = e;
    [1, 2, 5].forEach(function (m) { if (m * e <= target) len = m * e; });
    bar.querySelector('.bar').style.width = Math.round(len / umPerPx) + 'px';
    bar.querySelector('span').textContent = len >= 1000 ? (len / 1000) + ' mm' : len + ' \u00b5m';
  }

  // ------------------------------------------------------------------ hover readout
  function cellIndex(det) {
    if (!det.index) {
      var cells = new Int32Array(b64bytes(det.cells).buffer), m = {};
      for (var i = 0; i < cells.length / 2; i++) m[cells[2 * i + 1] * st.slide.grid.cols + cells[2 * i]] = i;
      det.index = m;
    }
    return det.index;
  }
  function refreshReadout() { if (st.hover) readout(st.hover.pos, st.hover.pane); }
  function readout(pos, pane) {
    var base = pane === 2 ? st.base2 : st.base;
    if (!base || !st.slide) return;
    st.hover = { pos: pos, pane: pane };
    var det = st.detail[st.slide.id], layer = st.layers[st.slide.id + '\u0000' + st.gene];
    var p = base.viewerElementToImageCoordinates(pos), s = st.slide, lines = [];
    if (p.x < 0 || p.y < 0 || p.x >= s.width || p.y >= s.height) { $('readout').textContent = 'Outside the slide.'; return; }
    lines.push(s.mpp ? 'x ' + (p.x * s.mpp).toFixed(1) + ' \u00b5m, y ' + (p.y * s.mpp).toFixed(1) + ' \u00b5m' :
      'x ' + Math.round(p.x) + ' px, y ' + Math.round(p.y) + ' px (no mpp)');
    if (det && layer) {
      var col = Math.floor(p.x / s.grid.step), row = Math.floor(p.y / s.grid.step);
      var t = cellIndex(det)[row * s.grid.cols + col];
      var dec = st.decoded[[s.id, st.gene, 'predicted'].join('\u0000')];
      if (t !== undefined && dec) {
        var q = dec.codes[row * dec.w + col];
        var id = det.tile_ids ? det.tile_ids[t] : 'tile' + t;
        lines.push(id + ': predicted ' + st.gene + ' ' + fmt(layer.lo + (q - 1) * (layer.hi - layer.lo) / 254) + ' ' + st.data.units);
        var sd = st.decoded[[s.id, st.gene, 'spread'].join('\u0000')];
        if (sd && layer.spread) {
          var qs = sd.codes[row * sd.w + col];
          lines.push('spread ' + fmt(layer.spread.lo + (qs - 1) * (layer.spread.hi - layer.spread.lo) / 254));
        }
      } else {
        lines.push('no tile here (background or not tiled)');
      }
      if (det.spots && layer.spots) {
        var best = -1, bd = Infinity, r = det.spots.diameter / 2;
        det.spots.centres.forEach(function (xy, i) {
          var d = Math.hypot(xy[0] - p.x, xy[1] - p.y);
          if (d < bd) { bd = d; best = i; }
        });
        if (best >= 0 && bd <= r) {
          lines.push('spot ' + det.spots.ids[best] + ': measured ' + fmt(spotValues(layer, 'measured')[best]) +
            ', predicted (out-of-fold) ' + fmt(spotValues(layer, 'predicted')[best]));
        }
      }
    }
    $('readout').textContent = lines.join('\n');
    $('readout').setAttribute('data-gene', layer ? st.gene : '');
  }

  // ------------------------------------------------------------------ slides and genes
  function chooseGene(name) {
    if (!st.genes[name]) { note('Gene ' + name + ' is not predicted by this model.'); return false; }
    note('');
    st.gene = name;
    $('gene').value = '';
    hideList();
    setReady(false);
    writeHash();
    renderMap();
    return true;
  }
  function openSlide(id, gene) {
    var slide = st.data.slides.filter(function (s) { return s.id === id; })[0] || st.data.slides[0];
    st.slide = slide; st.baseLoaded = false; st.levels = {}; st.mapItem = null;
    if (gene) st.gene = gene;
    $('slide').value = slide.id;
    setReady(false);
    writeHash();
    var go = function () {
      if (st.slide !== slide) return;
      $('spots').disabled = !slide.has_spots;
      if (!slide.has_spots) $('spots').checked = false;
      st.viewer.open(tileSource(slide));
      if (st.split) st.viewer2.open(tileSource(slide));
    };
    if (st.detail[slide.id]) go();
    else {
      st.detailWaiting = go;
      loadScript('slides/' + encodeURIComponent(slide.id) + '/slide.js', function (src) {
        note('Cannot load ' + src + ': rebuild the viewer.'); console.error('slide2expr: cannot load ' + src);
      });
    }
  }
  function tileSource(slide) {
    return {
      Image: {
        xmlns: DZ_NS, Url: slide.dzi.url, Format: slide.dzi.format,
        Overlap: String(slide.dzi.overlap), TileSize: String(slide.dzi.tile_size),
        Size: { Width: String(slide.width), Height: String(slide.height) }
      }
    };
  }

  // ------------------------------------------------------------------ side by side
  function sync(from, to) {
    // the other pane shows the same region: same zoom, same centre (panes are equally wide)
    if (!st.split || !to || st.syncing) return;
    st.syncing = true;
    to.viewport.zoomTo(from.viewport.getZoom(false), null, true);
    to.viewport.panTo(from.viewport.getCenter(false), true);
    st.syncing = false;
  }
  function setSplit(on) {
    if (on && !st.slide.has_spots) { note('This slide has no measured spots to compare.'); $('split').checked = false; return; }
    st.split = on;
    $('split').checked = on;
    $('stage').className = on ? 'split' : '';
    ['view2', 'overlay2', 'pane-labels'].forEach(function (id) { $(id).hidden = !on; });
    removeMap();
    if (on) {
      if (control('map') === 'off') document.querySelector('input[name=map][value=predicted]').checked = true;
      if (!st.viewer2) {
        st.viewer2 = OpenSeadragon({
          element: $('view2'), prefixUrl: 'openseadragon/images/', drawer: 'canvas',
          showNavigator: false, maxZoomPixelRatio: 2, visibilityRatio: 0.5,
          constrainDuringPan: false, animationTime: 0.6,
          gestureSettingsMouse: { clickToZoom: false }, crossOriginPolicy: false
        });
        st.viewer2.addHandler('open', function () {
          st.base2 = st.viewer2.world.getItemAt(0);
          sync(st.viewer, st.viewer2);
          renderMap();
        });
        st.viewer2.addHandler('viewport-change', function () { sync(st.viewer2, st.viewer); });
        ['animation', 'update-viewport', 'resize', 'open'].forEach(function (ev) { st.viewer2.addHandler(ev, drawOverlay); });
        new OpenSeadragon.MouseTracker({ element: st.viewer2.canvas, moveHandler: function (e) { readout(e.position, 2); } });
      }
      setReady(false);
      st.viewer2.open(tileSource(st.slide));
    } else {
      renderMap();
    }
    window.dispatchEvent(new Event('resize'));
  }
  function onOpen() {
    mark('open');
    st.base = st.viewer.world.getItemAt(0);
    st.base.addHandler('fully-loaded-change', function (e) {
      if (e.fullyLoaded) { mark('slide_loaded'); st.baseLoaded = true; if (st.painted && st.painted.indexOf(st.slide.id + '/') === 0) setReady(true); }
    });
    st.painted = null;
    renderMap();
  }

  // ------------------------------------------------------------------ gene search
  var matches = [], active = 0;
  function hideList() { $('gene-list').hidden = true; }
  function search(text) {
    var t = text.trim().toUpperCase(), all = st.data.genes;
    if (!t) { hideList(); return; }
    var starts = [], contains = [];
    all.forEach(function (g) {
      var u = g.name.toUpperCase(), i = u.indexOf(t);
      if (i === 0) starts.push(g); else if (i > 0) contains.push(g);
    });
    function byR(a, b) { return (b.r === null ? -9 : b.r) - (a.r === null ? -9 : a.r); }
    matches = starts.sort(byR).concat(contains.sort(byR)).slice(0, 60);
    active = 0;
    var ul = $('gene-list');
    ul.innerHTML = matches.map(function (g, i) {
      return '<li role="option" data-gene="' + esc(g.name) + '"' + (i === 0 ? ' class="active"' : '') + '><span>' +
        esc(g.name) + '</span><span class="r">' + (g.r === null ? 'r n/a' : 'r ' + g.r.toFixed(2)) + '</span></li>';
    }).join('') || '<li>no predicted gene matches</li>';
    ul.hidden = false;
  }
  function setupSearch() {
    var input = $('gene');
    input.addEventListener('input', function () { search(input.value); });
    input.addEventListener('keydown', function (e) {
      if (e.key === 'Enter') {
        e.preventDefault();
        var exact = st.genes[input.value.trim()] ? input.value.trim() : null;
        if (exact) chooseGene(exact); else if (matches.length) chooseGene(matches[active].name);
        else note('Gene ' + input.value + ' is not predicted by this model.');
      } else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
        e.preventDefault();
        active = Math.max(0, Math.min(matches.length - 1, active + (e.key === 'ArrowDown' ? 1 : -1)));
        Array.prototype.forEach.call($('gene-list').children, function (li, i) { li.className = i === active ? 'active' : ''; });
      } else if (e.key === 'Escape') hideList();
    });
    $('gene-list').addEventListener('mousedown', function (e) {
      var li = e.target.closest('li[data-gene]');
      if (li) { e.preventDefault(); chooseGene(li.getAttribute('data-gene')); }
    });
    input.addEventListener('blur', function () { setTimeout(hideList, 150); });
  }

  // ------------------------------------------------------------------ start
  function start(data) {
    mark('data');
    st.data = data;
    data.genes.forEach(function (g) { st.genes[g.name] = g; });
    $('model').textContent = 'model ' + data.head + ' \u00b7 ' + data.slides.length + ' slide(s) \u00b7 ' + data.genes.length + ' genes';
    $('slide').innerHTML = data.slides.map(function (s) { return '<option value="' + esc(s.id) + '">' + esc(s.id) + '</option>'; }).join('');
    $('cmap').innerHTML = Object.keys(data.colormaps).map(function (n) { return '<option>' + esc(n) + '</option>'; }).join('');
    var h = parseHash();
    if (h.head && h.head !== data.head) note('This viewer shows model ' + data.head + ', not ' + h.head + '.');
    var gene = h.gene && st.genes[h.gene] ? h.gene : data.default_gene;
    if (h.gene && !st.genes[h.gene]) note('Gene ' + h.gene + ' is not predicted by this model; showing ' + gene + '.');
    if (h.spots === '1') $('spots').checked = true;
    st.viewer = OpenSeadragon({
      element: $('view'), prefixUrl: 'openseadragon/images/', drawer: 'canvas',
      showNavigator: true, navigatorPosition: 'TOP_RIGHT', maxZoomPixelRatio: 2,
      visibilityRatio: 0.5, constrainDuringPan: false, animationTime: 0.6,
      gestureSettingsMouse: { clickToZoom: false }, crossOriginPolicy: false
    });
    st.viewer.addHandler('open', onOpen);
    st.viewer.addHandler('open-failed', function (e) { note('Cannot open the slide pyramid: ' + e.message); console.error('slide2expr: open failed: ' + e.message); });
    st.viewer.addHandler('tile-loaded', function (e) {
      if (e.tiledImage === st.base) { st.levels[e.tile.level] = true; mark('first_tile'); st.marks.last_tile = Math.round(performance.now()); }
    });
    ['animation', 'update-viewport', 'resize', 'open'].forEach(function (ev) { st.viewer.addHandler(ev, drawOverlay); });
    new OpenSeadragon.MouseTracker({ element: st.viewer.canvas, moveHandler: function (e) { readout(e.position, 1); } });
    st.viewer.addHandler('viewport-change', function () { sync(st.viewer, st.viewer2); });
    $('split').addEventListener('change', function () { setSplit($('split').checked); });
    $('slide').addEventListener('change', function () { openSlide($('slide').value, st.gene); });
    $('opacity').addEventListener('input', function () { if (st.mapItem) st.mapItem.setOpacity($('opacity').value / 100); });
    ['cmap', 'fade', 'spots', 'outline'].forEach(function (id) {
      $(id).addEventListener('change', function () {
        if (id === 'spots' || id === 'outline') {
          drawOverlay(); drawMeasuredLegend(st.layers[st.slide.id + '\u0000' + st.gene]);
        } else renderMap();
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll('input[name=map],input[name=scale]'), function (el) {
      el.addEventListener('change', renderMap);
    });
    $('swap').addEventListener('click', swap);
    document.addEventListener('keydown', function (e) { if (e.key === 'm' && e.target.tagName !== 'INPUT') swap(); });
    window.addEventListener('hashchange', function () {
      var hh = parseHash();
      if (hh.slide && hh.slide !== st.slide.id) openSlide(hh.slide, hh.gene || st.gene);
      else if (hh.gene && hh.gene !== st.gene) chooseGene(hh.gene);
    });
    setupSearch();
    openSlide(h.slide || data.slides[0].id, gene);
  }
  function swap() {
    // measured vs predicted by toggle: spots on and map off, or the other way round
    if (!st.slide.has_spots) { note('This slide has no measured spots.'); return; }
    var showMeasured = !$('spots').checked;
    $('spots').checked = showMeasured;
    document.querySelector('input[name=map][value=' + (showMeasured ? 'off' : 'predicted') + ']').checked = true;
    renderMap();
  }

  return {
    state: st,
    data: function (d) { start(d); },
    slide: function (id, detail) {
      st.detail[id] = detail;
      if (st.detailWaiting && st.slide && st.slide.id === id) { var go = st.detailWaiting; st.detailWaiting = null; go(); }
    },
    gene: function (slideId, gene, layer) {
      var key = slideId + '\u0000' + gene;
      st.layers[key] = layer;
      (st.pending[key] || []).forEach(function (cb) { cb(layer); });
      delete st.pending[key];
    },
    chooseGene: chooseGene, openSlide: openSlide, setSplit: setSplit
  };
})();
