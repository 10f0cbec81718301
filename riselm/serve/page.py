"""The turn-by-turn view, as one self-contained HTML page (no CDN: nothing is fetched but the server's own API).

`live_page` is the server's `GET /`: a person types a question, each turn appears as the server
finishes it (the stream's turn chunks), then the vote marks the turns that agreed and the voted answer.
`report_page` (riselm.serve.view, `riselm view`) shows the episodes of a file the same way, with filters.
Both draw with one script (`RENDER_JS`); model text is only ever set as text, never as HTML.
"""

from __future__ import annotations

import html
import json

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px}header h1{font-size:18px;margin:0}
header span{opacity:.7;font-size:13px}main{max-width:980px;margin:0 auto;padding:16px 20px}
textarea{width:100%;box-sizing:border-box;min-height:90px;font:inherit;padding:8px;border:1px solid #c9ced8;border-radius:6px}
.controls{display:flex;gap:14px;align-items:center;flex-wrap:wrap;margin:8px 0 14px}
.controls label{font-size:13px}.controls input[type=number]{width:60px}
button{font:inherit;padding:6px 16px;border-radius:6px;border:1px solid #2f6fde;background:#2f6fde;color:#fff;cursor:pointer}
button:disabled{opacity:.5;cursor:default}button.filter{background:#fff;color:#2f6fde}button.filter.on{background:#2f6fde;color:#fff}
.episode{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 14px;margin:0 0 14px}
.question{white-space:pre-wrap;font-weight:600;margin-bottom:8px}.meta{font-size:12px;color:#667}
.turn{border-left:4px solid #c9ced8;padding:6px 10px;margin:8px 0;background:#fafbfc}
.turn.agrees{border-left-color:#1f9d55;background:#f0faf4}.turn.voted{box-shadow:0 0 0 2px #1f9d55 inset}
.turn .head{font-size:12px;color:#556;display:flex;gap:12px;flex-wrap:wrap}
.turn .text{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;margin-top:4px;
  max-height:320px;overflow:auto}
.answer{font-weight:700}.ok{color:#1f9d55}.bad{color:#c53030}.none{color:#999}
.vote{margin-top:8px;padding:8px 10px;border-radius:6px;background:#eef3fd}
.error{color:#c53030;white-space:pre-wrap}.tag{font-size:11px;border-radius:10px;padding:1px 8px;background:#e8ebf0;margin-left:6px}
"""

# draw(container, episode): episode = {question, turns: [{turn, text, answer, agrees?, correct?, feedback?}],
# vote?: {answer, turn, votes, of, groups}, gold?, tags?, title?}
RENDER_JS = r"""
function el(tag, cls, text){const e=document.createElement(tag);if(cls)e.className=cls;
  if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function drawTurn(t, voted){
  const d=el('div','turn'+(t.agrees?' agrees':'')+(voted?' voted':''));d.dataset.turn=t.turn;
  const h=el('div','head');h.appendChild(el('span',null,'turn '+t.turn));
  const a=el('span','answer '+(t.answer===null||t.answer===undefined?'none':t.correct===true?'ok':t.correct===false?'bad':''),
             t.answer===null||t.answer===undefined?'no answer':'answer: '+t.answer);
  a.classList.add('turn-answer');h.appendChild(a);
  if(t.correct===true)h.appendChild(el('span','ok','✓ right'));if(t.correct===false)h.appendChild(el('span','bad','✗ wrong'));
  if(t.agrees)h.appendChild(el('span','ok agree-mark','agrees with the vote'));
  if(t.group!==null&&t.group!==undefined)h.appendChild(el('span',null,'group '+(t.group+1)));
  if(t.tokens)h.appendChild(el('span',null,t.tokens+' tokens'));if(t.truncated)h.appendChild(el('span','bad','cut at max tokens'));
  d.appendChild(h);d.appendChild(el('div','text',t.text));
  if(t.feedback)d.appendChild(el('div','meta','then: '+t.feedback));
  return d;
}
function drawVote(v, gold){
  const d=el('div','vote');
  if(!v||v.answer===null||v.answer===undefined){d.appendChild(el('span','none','no turn gave an answer: no vote'));return d;}
  d.appendChild(el('span',null,'voted answer: '));d.appendChild(el('span','answer vote-answer',v.answer));
  const agreeing=(v.groups.find(g=>g.includes(v.turn))||[]).join(', ');
  d.appendChild(el('span','meta',' — '+v.votes+' of '+v.of+' turns agree (turns '+agreeing+'); the answer shown is turn '+v.turn+"'s"));
  if(gold!==undefined&&gold!==null)d.appendChild(el('span','meta',' · gold: '+gold+(v.correct===true?' ✓':v.correct===false?' ✗':'')));
  return d;
}
function drawEpisode(container, e){
  container.textContent='';
  if(e.title){const m=el('div','meta',e.title);(e.tags||[]).forEach(t=>m.appendChild(el('span','tag',t)));container.appendChild(m);}
  if(e.question!==undefined)container.appendChild(el('div','question',e.question));
  const turns=el('div','turns');container.appendChild(turns);
  (e.turns||[]).forEach(t=>turns.appendChild(drawTurn(t, e.vote&&e.vote.turn===t.turn&&e.vote.answer!==null)));
  if(e.vote!==undefined)container.appendChild(drawVote(e.vote, e.gold));
}
"""

LIVE_JS = r"""
const form=document.getElementById('ask'), out=document.getElementById('out'), btn=document.getElementById('send');
form.addEventListener('submit', async ev=>{
  ev.preventDefault();btn.disabled=true;
  const q=document.getElementById('question').value, k=+document.getElementById('turns').value,
        s=+document.getElementById('stable').value, key=document.getElementById('key').value;
  const episode={question:q,turns:[]};out.className='episode';drawEpisode(out,episode);
  const status=el('div','meta','thinking…');status.id='status';out.appendChild(status);
  try{
    const headers={'Content-Type':'application/json'};if(key)headers.Authorization='Bearer '+key;
    const res=await fetch('v1/chat/completions',{method:'POST',headers,body:JSON.stringify({model:MODEL,stream:true,
      messages:[{role:'user',content:q}],riselm:{turns:k,stop_when_stable:s,stream_turns:true}})});
    if(!res.ok){let m=res.status+' '+res.statusText;try{m=(await res.json()).error.message}catch(e){}throw new Error(m);}
    const reader=res.body.getReader(),dec=new TextDecoder();let buf='';
    for(;;){const {done,value}=await reader.read();if(done)break;buf+=dec.decode(value,{stream:true});
      let i;while((i=buf.indexOf('\n\n'))>=0){const block=buf.slice(0,i);buf=buf.slice(i+2);
        for(const line of block.split('\n')){if(!line.startsWith('data: '))continue;const data=line.slice(6);if(data==='[DONE]')continue;
          const msg=JSON.parse(data);if(msg.error)throw new Error(msg.error.message);
          if(msg.riselm&&msg.riselm.turn){episode.turns.push(msg.riselm.turn);drawEpisode(out,episode);out.appendChild(status);
            status.textContent='turn '+msg.riselm.turn.turn+' of up to '+k+' done…';}
          if(msg.riselm&&msg.riselm.vote){const r=msg.riselm;drawEpisode(out,{question:q,turns:r.turns,vote:r.vote});
            out.appendChild(el('div','meta','stopped: '+r.stopped+' · task '+r.task));}}}}
  }catch(e){out.appendChild(el('div','error','error: '+e.message));}
  finally{btn.disabled=false;const s=document.getElementById('status');if(s)s.remove();}
});
"""

REPORT_JS = r"""
const list=document.getElementById('episodes');let current='all';
function show(){list.textContent='';let n=0;
  for(const e of EPISODES){if(current!=='all'&&!(e.tags||[]).includes(current))continue;
    const c=el('div','episode');drawEpisode(c,e);list.appendChild(c);n++;}
  document.getElementById('shown').textContent=n+' of '+EPISODES.length+' episodes';
  document.querySelectorAll('button.filter').forEach(b=>b.classList.toggle('on',b.dataset.filter===current));}
document.querySelectorAll('button.filter').forEach(b=>b.addEventListener('click',()=>{current=b.dataset.filter;show();}));
show();
"""


def _json_for_script(value) -> str:
    """JSON safe inside a <script> element (no "</script>", no "<!--")."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(title: str, subtitle: str, body: str, script: str) -> str:
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1>"
        f"<span>{html.escape(subtitle)}</span></header><main>{body}</main><script>{RENDER_JS}{script}</script></body></html>"
    )


def live_page(model: str, turns: int, max_turns: int) -> str:
    """The server's page: ask a question, watch each turn, see which turns agreed and the vote."""
    body = (
        "<form id=ask><textarea id=question placeholder='Ask a question; the model answers within \\boxed{}'></textarea>"
        f"<div class=controls><label>turns K <input id=turns type=number min=1 max={max_turns} value={turns}></label>"
        "<label>stop when N agree <input id=stable type=number min=0 max=20 value=0></label>"
        "<label>API key <input id=key type=password autocomplete=off placeholder='if the server needs one'></label>"
        "<button id=send type=submit>Ask</button></div></form><div id=out></div>"
    )
    script = f"const MODEL={_json_for_script(model)};{LIVE_JS}"
    return _page("riselm serve", f"{model}: up to {turns} turns, then a majority vote over their answers", body, script)


FILTERS = (("all", "all"), ("wrong→right", "wrong→right"), ("right→wrong", "right→wrong"), ("unsolved", "unsolved"))


def report_page(title: str, episodes: list[dict], counts: dict[str, int]) -> str:
    """A file's episodes (riselm.serve.view.episode_view dicts) with filter buttons."""
    buttons = "".join(
        f"<button class=filter data-filter='{html.escape(key)}'>{html.escape(label)} ({counts.get(key, 0)})</button> "
        for key, label in FILTERS
    )
    body = f"<div class=controls>{buttons}<span id=shown class=meta></span></div><div id=episodes></div>"
    script = f"const EPISODES={_json_for_script(episodes)};{REPORT_JS}"
    return _page(title, "each turn, its answer, which turns agreed, and the vote", body, script)
