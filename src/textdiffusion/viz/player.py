"""The trace player: one self-contained HTML file (no network, opens from disk) that replays a
generation step by step. Play/pause, a step slider, speed, keyboard control (space: play/pause,
arrows: one step, Home/End); masked positions as a dim block, tokens that will still change
(uniform, Gaussian) struck through, this step's decisions outlined; colour by the step each
token was decided or by its confidence; block boundaries; an AR pane (``--ar RUN``) on the same
axis of network calls; a heatmap of the decision step per position; the fraction decided and
the mean confidence per step.
"""

from __future__ import annotations

import html
import json

from .story import Story

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:1.2em auto;max-width:72em;padding:0 1em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.25em;margin:.2em 0}.meta{color:#555;font-size:.9em}
.controls{display:flex;gap:.8em;align-items:center;flex-wrap:wrap;margin:.8em 0}
.controls input[type=range]{flex:1;min-width:12em}
button,select{font:inherit;padding:.25em .7em}
.panes{display:grid;grid-template-columns:1fr;gap:1em}.panes.two{grid-template-columns:1fr 1fr}
.pane{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.7em 1em}
.pane h2{font-size:1em;margin:0 0 .4em}.calls{color:#555;font-size:.9em}
.text{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;min-height:3em}
.tok{border-radius:2px}.fixed{color:#333;background:#eee}.masked{color:#bbb}
.noisy{text-decoration:line-through;text-decoration-color:#c00;color:#777}
.new{outline:2px solid #d35400;outline-offset:-1px}.block{border-left:2px solid #2c7be5;margin-left:1px}
.heat{display:flex;flex-wrap:wrap;gap:1px;margin-top:.4em}.heat div{width:10px;height:14px}
.legend{display:flex;align-items:center;gap:.4em;font-size:.85em;color:#555}
.legend span{display:inline-block;width:9em;height:.8em;border-radius:2px}
svg{background:#fff;border:1px solid #ddd;border-radius:6px}
"""

JS = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const S = D.story, A = D.ar;
const $ = id => document.getElementById(id);
const slider = $('step'), play = $('play'), speed = $('speed'), mode = $('mode');
slider.max = S.steps - 1;
let timer = null;
function colour(p, story) {
  if (mode.value === 'confidence') {
    const c = story.confidence[p];
    if (c === null || c === undefined) return '';
    return `hsl(${Math.round(120 * c)},70%,85%)`;
  }
  const at = story.decided_at[p];
  if (at === null || at === undefined) return '';
  const f = story.steps > 1 ? at / (story.steps - 1) : 0;
  return `hsl(${Math.round(240 - 200 * f)},70%,86%)`;
}
function render(el, story, i) {
  el.textContent = '';
  const starts = new Set(story.block_starts);
  for (let p = 0; p < story.length; p++) {
    const s = story.states[i][p], t = story.shown[i][p];
    const span = document.createElement('span');
    span.className = 'tok ' + s + (starts.has(p) ? ' block' : '');
    span.textContent = t < 0 ? '\u2591' : (story.pieces[String(t)] ?? '?');
    if (s === 'decided' || s === 'new') span.style.background = colour(p, story);
    span.title = `position ${p}` + (story.decided_at[p] !== null ? `, decided at step ${story.decided_at[p] + 1}` : '') +
      (story.confidence[p] !== null && story.confidence[p] !== undefined ? `, confidence ${story.confidence[p].toFixed(3)}` : '');
    el.appendChild(span);
  }
}
function arFrame(calls) {  // the AR twin after as many network calls
  let k = -1;
  for (let j = 0; j < A.steps; j++) if (A.nfe[j] <= calls) k = j;
  return k;
}
function show(i) {
  i = Math.max(0, Math.min(S.steps - 1, i));
  slider.value = i;
  render($('text'), S, i);
  $('label').textContent = `step ${i + 1} / ${S.steps}`;
  $('calls').textContent = `${S.nfe[i]} network calls, ${(100 * S.fraction[i]).toFixed(0)}% decided`;
  if (A) {
    const k = arFrame(S.nfe[i]);
    if (k >= 0) render($('ar'), A, k); else $('ar').textContent = '(prefill not yet done)';
    $('arcalls').textContent = k >= 0 ? `${A.nfe[k]} network calls, ${(100 * A.fraction[k]).toFixed(0)}% decided` : '';
  }
  drawCursor(i);
}
function stop() { clearInterval(timer); timer = null; play.textContent = 'Play'; }
function toggle() {
  if (timer) return stop();
  if (+slider.value >= S.steps - 1) show(0);
  play.textContent = 'Pause';
  timer = setInterval(() => {
    const i = +slider.value + 1;
    if (i >= S.steps) return stop();
    show(i);
  }, 400 / +speed.value);
}
play.onclick = toggle;
speed.onchange = () => { if (timer) { stop(); toggle(); } };
slider.oninput = () => show(+slider.value);
mode.onchange = () => { show(+slider.value); heat(); };
document.addEventListener('keydown', e => {
  if (e.target.tagName === 'SELECT' || e.target.tagName === 'BUTTON' && e.key === ' ') return;
  const keys = {' ': () => toggle(), ArrowRight: () => { stop(); show(+slider.value + 1); },
                ArrowLeft: () => { stop(); show(+slider.value - 1); }, Home: () => { stop(); show(0); },
                End: () => { stop(); show(S.steps - 1); }};
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }  // (the slider's own keys would move it twice)
});
function heat() {
  const el = $('heat'); el.textContent = '';
  for (let p = 0; p < S.length; p++) {
    const d = document.createElement('div');
    d.style.background = S.fixed[p] ? '#ddd' : (colour(p, S) || '#fff');
    d.title = `position ${p}` + (S.decided_at[p] !== null ? `: step ${S.decided_at[p] + 1}` : ': fixed');
    el.appendChild(d);
  }
}
const W = 640, H = 160, pad = 30;
function drawPlot() {
  const svg = $('plot'), n = S.steps;
  const x = i => pad + (W - 2 * pad) * (n > 1 ? i / (n - 1) : 0), y = v => H - pad - (H - 2 * pad) * v;
  const line = (vals, colour) => {
    const pts = vals.map((v, i) => v === null ? null : `${x(i)},${y(v)}`).filter(Boolean).join(' ');
    return `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${pts}"/>`;
  };
  svg.innerHTML = `<line x1="${pad}" y1="${y(0)}" x2="${W - pad}" y2="${y(0)}" stroke="#999"/>` +
    `<line x1="${pad}" y1="${y(0)}" x2="${pad}" y2="${y(1)}" stroke="#999"/>` +
    `<text x="${pad}" y="14" font-size="12" fill="#2c7be5">fraction decided</text>` +
    `<text x="${pad + 130}" y="14" font-size="12" fill="#d35400">mean confidence of the step's decisions</text>` +
    `<text x="${W - pad}" y="${H - 8}" font-size="12" text-anchor="end">step</text>` +
    line(S.fraction, '#2c7be5') + line(S.mean_confidence, '#d35400') +
    `<line id="cursor" y1="${y(0)}" y2="${y(1)}" stroke="#555" stroke-dasharray="3,3"/>`;
}
function drawCursor(i) {
  const c = document.getElementById('cursor'); if (!c) return;
  const n = S.steps, xx = pad + (W - 2 * pad) * (n > 1 ? i / (n - 1) : 0);
  c.setAttribute('x1', xx); c.setAttribute('x2', xx);
}
drawPlot(); heat(); show(0);
"""


def _data_json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # no markup inside the script element


def player_html(story: Story, ar: Story | None = None, title: str | None = None) -> str:
    """The self-contained HTML player of ``story`` (with ``ar``: the AR pane beside it)."""
    title = title or story.title or f"{story.process} / {story.sampler}"
    data = {"story": story.to_dict(), "ar": ar.to_dict() if ar is not None else None}
    ar_pane = ""
    if ar is not None:
        ar_pane = (f'<div class="pane"><h2>{html.escape(ar.title or "AR twin")} '
                   f'<span class="calls" id="arcalls"></span></h2><div class="text" id="ar"></div></div>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><link rel="icon" href="data:,"><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">{html.escape(story.process)} process, {html.escape(story.sampler)} sampler, {story.steps} steps,
{story.nfe[-1]} network calls for {story.length} positions. Keys: space play/pause, &larr; &rarr; one step, Home/End.</div>
<div class="controls">
 <button id="play" type="button">Play</button>
 <input id="step" type="range" min="0" value="0" aria-label="step">
 <span id="label"></span>
 <label>speed <select id="speed"><option value="0.5">0.5&times;</option><option value="1" selected>1&times;</option>
 <option value="2">2&times;</option><option value="4">4&times;</option></select></label>
 <label>colour by <select id="mode"><option value="step">step decided</option>
 <option value="confidence">confidence</option></select></label>
</div>
<div class="panes{' two' if ar is not None else ''}">
 <div class="pane"><h2>{html.escape(story.title or 'diffusion')} <span class="calls" id="calls"></span></h2>
 <div class="text" id="text"></div></div>
 {ar_pane}
</div>
<h2 style="font-size:1em">Step each position was decided</h2>
<div class="legend">early <span style="background:linear-gradient(90deg,hsl(240,70%,86%),hsl(40,70%,86%))"></span>
late (confidence: <span style="width:5em;background:linear-gradient(90deg,hsl(0,70%,85%),hsl(120,70%,85%))"></span> low to high);
grey: fixed text</div>
<div class="heat" id="heat"></div>
<h2 style="font-size:1em">Per step</h2>
<svg id="plot" width="640" height="160" role="img" aria-label="fraction decided and mean confidence per step"></svg>
<script type="application/json" id="data">{_data_json(data)}</script>
<script>{JS}</script>
</body></html>
"""
