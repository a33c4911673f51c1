"""``hiper view PATH``: trajectories and their credit as one self-contained HTML page (no server, no CDN).

``PATH`` is a run folder (its ``trajectories.jsonl``, written by ``hiper train``) or a JSONL file of episode
records (``hiper eval --out`` writes ``<name>.trajectories.jsonl``). The page lists the episodes, filterable by
outcome, task type and iteration; for the selected episode it shows every turn's observation and response, the
segments coloured by subgoal with the SWITCH turns marked, a per-token credit heatmap of the chosen role (the
advantage each token was trained with; green positive, red negative), and the critic's values and targets over the
episode. ::

    hiper view runs/cpu_demo                     # -> runs/cpu_demo/view.html
    hiper view results.trajectories.jsonl -o eval.html
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import Any

from hiper.trainer.samples import read_jsonl

TRAJECTORIES = "trajectories.jsonl"

_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#side{width:300px;border-right:1px solid #ccc;display:flex;flex-direction:column}
#filters{padding:8px;border-bottom:1px solid #ddd;display:grid;gap:4px}
#list{overflow:auto;flex:1}
.episode{padding:4px 8px;border-bottom:1px solid #eee;cursor:pointer}
.episode.sel{background:#e8f0fe}.won{color:#137333}.failed{color:#b3261e}
#main{flex:1;overflow:auto;padding:10px 16px}
.turn{border-left:6px solid #999;margin:8px 0;padding:4px 8px;background:#fafafa}
.badge{display:inline-block;font-size:11px;padding:0 5px;border-radius:3px;background:#333;color:#fff;margin-right:4px}
.badge.switch{background:#c5221f}.obs{white-space:pre-wrap;color:#555;margin:2px 0}
.tok{white-space:pre-wrap;font-family:monospace;border-radius:2px}.tok.off{color:#aaa}
.resp{font-family:monospace;white-space:pre-wrap}
table.vals{border-collapse:collapse;font-size:12px}table.vals td{padding:0 6px}
svg{background:#fff;border:1px solid #ddd}
"""

_JS = r"""
const DATA = JSON.parse(document.getElementById('data').textContent);
const $ = (id) => document.getElementById(id);
let current = 0;
function segColor(k){return `hsl(${(k*67)%360},65%,45%)`;}
function esc(s){return String(s).replace(/[&<>]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));}
function heat(a, scale){
  if (a === null || a === undefined) return '';
  const x = Math.max(-1, Math.min(1, a / (scale || 1)));
  return x >= 0 ? `rgba(30,142,62,${0.15+0.7*x})` : `rgba(197,34,31,${0.15+0.7*(-x)})`;
}
function fillFilters(){
  const types = [...new Set(DATA.map(e=>e.task_type))].sort();
  const its = [...new Set(DATA.map(e=>e.iteration))].sort((a,b)=>a-b);
  $('ftype').innerHTML = '<option value="">all task types</option>' + types.map(t=>`<option>${esc(t)}</option>`).join('');
  $('fit').innerHTML = '<option value="">all iterations</option>' + its.map(t=>`<option>${t}</option>`).join('');
}
function visible(){
  const o=$('fout').value, t=$('ftype').value, it=$('fit').value;
  return DATA.map((e,i)=>[e,i]).filter(([e])=> (!o || (o==='won')===e.won) && (!t || e.task_type===t)
    && (!it || String(e.iteration)===it));
}
function renderList(){
  const rows = visible();
  $('list').innerHTML = rows.map(([e,i])=>`<div class="episode ${i===current?'sel':''}" data-i="${i}">
    <span class="${e.won?'won':'failed'}">${e.won?'won':'failed'}</span> it ${e.iteration} · ${esc(e.task_type)}
    · ${e.length} turns · ${e.n_segments} segments</div>`).join('');
  document.querySelectorAll('.episode').forEach(d=>d.onclick=()=>{current=+d.dataset.i; render();});
  $('count').textContent = `${rows.length} of ${DATA.length} episodes`;
}
function curves(e){
  const heads = ['low','high','term','turn'];
  const w=520,h=140,pad=24, n=e.turns.length;
  const series = heads.map(hd=>[hd, e.turns.map(t=>t.values ? t.values[hd] : undefined)]).filter(([,v])=>v.some(x=>x!==undefined));
  if (!series.length) return '';
  const all = series.flatMap(([,v])=>v.filter(x=>x!==undefined));
  const lo=Math.min(...all,0), hi=Math.max(...all,1e-9);
  const X=i=>pad+(w-2*pad)*(n>1?i/(n-1):0.5), Y=v=>h-pad-(h-2*pad)*(v-lo)/(hi-lo||1);
  const colors={low:'#1a73e8',high:'#e37400',term:'#9334e6',turn:'#188038'};
  const lines = series.map(([hd,v])=>`<polyline class="curve" data-head="${hd}" fill="none" stroke="${colors[hd]}"
    stroke-width="2" points="${v.map((x,i)=>x===undefined?'':`${X(i)},${Y(x)}`).join(' ')}"/>
    <text x="${w-pad}" y="${12+12*heads.indexOf(hd)}" fill="${colors[hd]}" font-size="11" text-anchor="end">V_${hd}</text>`).join('');
  return `<svg width="${w}" height="${h}" id="values"><line x1="${pad}" x2="${w-pad}" y1="${Y(0)}" y2="${Y(0)}" stroke="#ccc"/>${lines}</svg>`;
}
function render(){
  renderList();
  const e = DATA[current]; if (!e) { $('main').innerHTML='<p>no episode</p>'; return; }
  const role = $('frole').value;
  const scale = Math.max(1e-9, ...e.turns.flatMap(t=>(t.token_advantages||[]).map(Math.abs)));
  let out = `<h3>${esc(e.task)} · ${esc(e.task_type)} · <span class="${e.won?'won':'failed'}">${e.won?'won':'failed'}</span>
    · score ${e.score} · ${e.source} iteration ${e.iteration}</h3>` + curves(e);
  for (const t of e.turns){
    let resp;
    if (t.tokens){
      resp = t.tokens.map((tok,j)=>{const r=t.roles[j]; const on = role==='all' ? r!=='' : r===role;
        return `<span class="tok ${on?'':'off'}" data-role="${r}" title="${r||'none'} ${t.token_advantages[j]}"
          style="background:${on?heat(t.token_advantages[j],scale):'transparent'}">${esc(tok)}</span>`;}).join('');
    } else resp = `<span class="resp">${esc(t.response)}</span>`;
    const vals = t.values ? `<table class="vals"><tr>${Object.entries(t.values).map(([k,v])=>`<td>V_${k} ${v.toFixed(3)}</td>`).join('')}
      ${Object.entries(t.advantages||{}).map(([k,v])=>`<td>A_${k} ${v.toFixed(3)}</td>`).join('')}
      <td>r ${t.reward}</td>${t.shaping?`<td>shaped ${t.shaping.total.toFixed(3)}</td>`:''}</tr></table>` : `<div>r ${t.reward}</div>`;
    out += `<div class="turn" data-segment="${t.segment}" style="border-left-color:${segColor(t.segment)}">
      <div>${t.switch?'<span class="badge switch">SWITCH</span>':`<span class="badge">${esc(t.decision)}</span>`}
      turn ${t.turn} · segment ${t.segment}: <b>${esc(t.subgoal||'')}</b> ${t.valid?'':'<span class="badge switch">invalid '+esc(t.errors.join(','))+'</span>'}</div>
      <div class="obs">${esc(t.observation)}</div><div>${resp}</div>${vals}</div>`;
  }
  $('main').innerHTML = out;
}
['fout','ftype','fit','frole'].forEach(id=>$(id).onchange=()=>{ const v=visible(); if(v.length && !v.some(([,i])=>i===current)) current=v[0][1]; render();});
fillFilters(); render();
"""


def render_html(records: list[dict[str, Any]], title: str) -> str:
    """The page: data embedded as JSON, CSS and JS inline (works offline, from a file)."""
    data = json.dumps(records, allow_nan=False, default=str).replace("</", "<\\/")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><div id="side"><div id="filters">
<b>{html.escape(title)}</b><span id="count"></span>
<select id="fout"><option value="">won and failed</option><option value="won">won</option>
<option value="failed">failed</option></select>
<select id="ftype"></select><select id="fit"></select>
<label>credit of <select id="frole"><option value="action">action tokens</option><option value="subgoal">subgoal
tokens</option><option value="switch">switch tokens</option><option value="all">all roles</option></select></label>
</div><div id="list"></div></div><div id="main"></div>
<script type="application/json" id="data">{data}</script>
<script>{_JS}</script></body></html>
"""


def _clean(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN / inf have no JSON form: shown as null."""
    def fix(x: Any) -> Any:
        if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
            return None
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, list):
            return [fix(v) for v in x]
        return x

    return [fix(r) for r in records]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a run folder (its trajectories.jsonl) or a JSONL file of episode records")
    parser.add_argument("-o", "--output", default=None, help="the HTML file (default: view.html in the run "
                        "folder, or <jsonl name>.html)")


def main(args: argparse.Namespace) -> int:
    path = Path(args.path)
    source = path / TRAJECTORIES if path.is_dir() else path
    if not source.is_file():
        hint = " (hiper train writes it; set trainer.sample_trajectories > 0)" if path.is_dir() else ""
        print(f"hiper view: error: {source} does not exist{hint}", file=sys.stderr)
        return 2
    try:
        records = read_jsonl(source)
    except ValueError as exc:
        print(f"hiper view: error: {exc}", file=sys.stderr)
        return 2
    if not records:
        print(f"hiper view: error: {source} holds no episodes", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else (path / "view.html" if path.is_dir() else path.with_suffix(".html"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(_clean(records), f"hiper view: {source}"), encoding="utf-8")
    print(f"hiper view: {len(records)} episodes -> {out}")
    return 0


__all__ = ["add_arguments", "main", "render_html"]
