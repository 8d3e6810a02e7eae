"""The demo page at ``GET /``: AI-assisted writing with a diffusion model, watched live. Type a
prompt and continue it, write a template with [MASK:n] holes and fill them, or select a span of
your text and have it rewritten at a strength; choose the steps and the sampler; the canvas
denoises on screen from the server's ``diffusion_frame`` events, and the result can be taken back
into the text. One HTML file, no external assets (works offline), every control reachable by
keyboard (Ctrl+Enter: continue or fill; Alt+R: rewrite the selection; Alt+A: accept).

The page keeps every canvas it drew in ``window.demo.history`` (the replay slider under the
output reads it; the browser test checks it).
"""

from __future__ import annotations

import html

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>textdiffusion: __NAME__</title><link rel="icon" href="data:,">
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:1.2em auto;max-width:60em;padding:0 1em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.3em;margin:.2em 0}.meta{color:#555;font-size:.9em}
textarea{width:100%;box-sizing:border-box;font:15px/1.45 ui-monospace,Menlo,Consolas,monospace;padding:.6em;min-height:8em}
.row{display:flex;gap:.8em;flex-wrap:wrap;align-items:center;margin:.6em 0}
label{font-size:.9em;color:#333}input[type=number]{width:5em}
button{font:inherit;padding:.35em .9em;border:1px solid #888;border-radius:5px;background:#fff;cursor:pointer}
button.primary{background:#2c7be5;color:#fff;border-color:#2c7be5}button:disabled{opacity:.5;cursor:default}
#canvas{font:15px/1.45 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;background:#fff;
border:1px solid #ddd;border-radius:6px;padding:.6em;min-height:6em}
.mask{color:#bbb}.stats{color:#555;font-size:.85em;min-height:1.2em}.error{color:#b00020}
</style></head>
<body>
<h1>textdiffusion: __NAME__</h1>
<div class="meta">__ABOUT__ Watch the text emerge from noise: every denoising step is drawn as it arrives.</div>
<label for="text">Your text: a prompt to continue, a template with holes like <code>[MASK:5]</code>, or
select a span to rewrite</label>
<textarea id="text" spellcheck="false">__EXAMPLE__</textarea>
<div class="row">
 <label>steps <input id="steps" type="number" min="1" max="1024" value="32"></label>
 <label>sampler <select id="sampler">__SAMPLERS__</select></label>
 <label>new tokens <input id="length" type="number" min="1" value="48"></label>
 <label>temperature <input id="temperature" type="number" min="0" step="0.1" value="0.8"></label>
 <label>rewrite strength <input id="strength" type="range" min="0.1" max="1" step="0.05" value="0.7"></label>
 <label>API key <input id="key" type="password" size="10" autocomplete="off"></label>
</div>
<div class="row">
 <button id="go" class="primary" type="button" title="Ctrl+Enter">Continue / fill holes</button>
 <button id="rewrite" type="button" title="Alt+R">Rewrite selection</button>
 <button id="accept" type="button" title="Alt+A" disabled>Accept into the text</button>
 <button id="stop" type="button" disabled>Stop</button>
</div>
<div id="canvas" aria-live="polite"></div>
<div class="row"><label>replay <input id="replay" type="range" min="0" max="0" value="0" disabled></label>
<span class="stats" id="stats"></span></div>
<script>
const $ = id => document.getElementById(id);
const demo = window.demo = {history: [], final: null, busy: false, controller: null};
function draw(text) {
  const el = $('canvas'); el.textContent = '';
  for (const part of text.split(/(\u2591+)/)) {
    if (!part) continue;
    const span = document.createElement('span');
    if (part[0] === '\u2591') span.className = 'mask';
    span.textContent = part; el.appendChild(span);
  }
}
function settings() {
  const body = {steps: +$('steps').value, temperature: +$('temperature').value, stream: true,
                stream_options: {include_denoising: true, include_usage: true}};
  if ($('sampler').value) body.sampler = $('sampler').value;
  return body;
}
function setBusy(b) {
  demo.busy = b; $('go').disabled = b; $('rewrite').disabled = b; $('stop').disabled = !b;
  if (b) $('accept').disabled = true;
}
async function run(path, body, wrap) {
  setBusy(true); demo.history = []; demo.final = null; $('stats').textContent = ''; $('stats').className = 'stats';
  const headers = {'Content-Type': 'application/json'};
  if ($('key').value) headers.Authorization = 'Bearer ' + $('key').value;
  demo.controller = new AbortController();
  let committed = '', usage = null, started = performance.now();
  try {
    const r = await fetch(path, {method: 'POST', headers, body: JSON.stringify(body), signal: demo.controller.signal});
    if (!r.ok) { const e = await r.json(); throw new Error(e.error ? e.error.message : r.statusText); }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
        let event = 'message', data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (!data || data === '[DONE]') continue;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        if (event === 'diffusion_frame') {
          const text = msg.diffusion_texts[0];
          demo.history.push(text); draw(text);
          $('stats').textContent = `step ${msg.diffusion_frame.step + 1}, ${msg.diffusion_frame.nfe} network calls`;
        } else {
          for (const c of msg.choices || []) if (c.index === 0) {
            const delta = c.text !== undefined ? c.text : (c.delta && c.delta.content) || '';
            committed += delta;
          }
          if (msg.usage) usage = msg.usage;
        }
      }
    }
    demo.final = wrap(committed);
    demo.history.push(demo.final); draw(demo.final);
    const secs = ((performance.now() - started) / 1000).toFixed(2);
    $('stats').textContent = usage ? `${usage.denoising_steps} steps, ${usage.nfe} network calls, ` +
      `${usage.tokens_per_forward} tokens per call, ${secs} s` : `${secs} s`;
    $('accept').disabled = false;
  } catch (e) {
    if (e.name !== 'AbortError') { $('stats').textContent = 'error: ' + e.message; $('stats').className = 'stats error'; }
  } finally {
    setBusy(false);
    $('replay').max = Math.max(0, demo.history.length - 1); $('replay').value = $('replay').max;
    $('replay').disabled = demo.history.length < 2;
  }
}
const HOLE = /\[MASK(:\d+(-\d+)?)?\]/;
function go() {
  const text = $('text').value, body = settings();
  if (HOLE.test(text)) { body.template = text; return run('/v1/infill', body, t => t); }
  body.prompt = text; body.max_tokens = +$('length').value;
  return run('/v1/completions', body, t => text + t);
}
function rewrite() {
  const el = $('text'), a = el.selectionStart, b = el.selectionEnd;
  if (a === b) { $('stats').textContent = 'select the span to rewrite first'; return; }
  const points = n => Array.from(el.value.slice(0, n)).length;  // the server counts characters, not UTF-16 units
  const body = settings(); body.text = el.value; body.span = [points(a), points(b)]; body.strength = +$('strength').value;
  return run('/v1/edit', body, t => t);
}
$('go').onclick = go; $('rewrite').onclick = rewrite;
$('stop').onclick = () => demo.controller && demo.controller.abort();
$('accept').onclick = () => { if (demo.final !== null) { $('text').value = demo.final; $('accept').disabled = true; $('text').focus(); } };
$('replay').oninput = () => draw(demo.history[+$('replay').value]);
document.addEventListener('keydown', e => {
  if (e.ctrlKey && e.key === 'Enter' && !demo.busy) { e.preventDefault(); go(); }
  else if (e.altKey && e.key.toLowerCase() === 'r' && !demo.busy) { e.preventDefault(); rewrite(); }
  else if (e.altKey && e.key.toLowerCase() === 'a') { e.preventDefault(); $('accept').click(); }
});
</script>
</body></html>
"""


def page(name: str, run) -> str:
    """The demo page for the served ``run`` (its samplers, an example prompt)."""
    from ..sampling.registry import DEFAULTS, SAMPLERS

    process = run.process.name
    fitting = [s.name for s in SAMPLERS.values() if process in s.fits]
    default = DEFAULTS[process]
    options = "".join(f'<option value="{html.escape(n)}"{" selected" if n == default else ""}>{html.escape(n)}</option>'
                      for n in fitting)
    about = f"A {html.escape(process)} model, context {run.cfg.model.context} tokens."
    example = "ROMEO:" if run.tokenizer.vocab_size > 1000 else ""
    return (PAGE.replace("__NAME__", html.escape(name)).replace("__ABOUT__", about)
            .replace("__SAMPLERS__", options).replace("__EXAMPLE__", html.escape(example)))
