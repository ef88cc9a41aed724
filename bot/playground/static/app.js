// agentbot playground: an emulated Slack channel in the browser.
//
// The page only watches and pokes the Slack emulator: it loads /emulator/state, follows
// /emulator/events (server-sent events) to show messages as the bot posts and edits them,
// and asks the server to act as Slack (/playground/send, /playground/action).
// Nothing from a message is ever inserted as HTML: every text is escaped first, and the
// small Markdown / mrkdwn renderers below only add the tags they build themselves.
"use strict";

(() => {
  // ---- state ---------------------------------------------------------------------------

  const store = {
    info: {
      model: "",
      demo: false,
      user: { id: "U123", name: "you" },
      bot: { id: "UBOT", name: "agentbot" },
      channel: { id: "C123", name: "general" },
      dm: { id: "D123", name: "agentbot" },
      commands: [],
      users: {},
    },
    current: location.hash === "#dm" ? "dm" : "channel", // the conversation shown: "channel" or "dm"
    stopping: new Map(), // run id -> Date.now() when this page asked the bot to stop it
    stopVersion: 0,
    origin: null, // the emulator's clock (seconds) when the playground started
    messages: new Map(), // "channel/ts" -> message as the emulator describes it
    calls: new Map(), // "at|method" -> API call
    version: 0,
    openThread: null, // ts of the parent whose thread is open
    localSeq: 0,
  };

  const $ = (selector) => document.querySelector(selector);
  const keyOf = (m) => `${m.channel}/${m.ts}`;

  function upsertMessage(message) {
    const key = keyOf(message);
    const known = store.messages.get(key);
    const versions = Array.isArray(message.history) ? message.history.length : 0;
    // The feed may replay a change older than the snapshot: never go back in time.
    if (known && versions < known._versions) return;
    delete message.history;
    message._versions = versions;
    message._v = ++store.version;
    store.messages.set(key, message);
  }

  function upsertCall(call) {
    store.calls.set(`${call.at}|${call.method}`, call);
  }

  function applyEvent(event) {
    if (event.type === "message") {
      if (event.change === "deleted") store.messages.delete(keyOf(event.message));
      else upsertMessage(event.message);
      scheduleRender();
    } else if (event.type === "call") {
      upsertCall(event.call);
      scheduleCalls();
    }
  }

  function applySnapshot(snapshot) {
    const local = [...store.messages.values()].filter((m) => m._local);
    if (typeof snapshot.started_at === "number") store.origin = snapshot.started_at;
    store.messages.clear();
    store.calls.clear();
    for (const top of Object.values(snapshot.channels || {})) {
      for (const message of top) {
        const replies = message.replies || [];
        delete message.replies;
        upsertMessage(message);
        replies.forEach(upsertMessage);
      }
    }
    for (const replies of Object.values(snapshot.orphan_threads || {})) replies.forEach(upsertMessage);
    (snapshot.ephemerals || []).forEach(upsertMessage);
    (snapshot.calls || []).forEach(upsertCall);
    for (const message of local) store.messages.set(keyOf(message), message);
    for (const view of views) view.reset();
    scheduleRender();
    scheduleCalls();
  }

  // ---- the live feed -------------------------------------------------------------------

  let feed = null;

  function connect() {
    feed = new EventSource("/emulator/events");
    let pending = [];
    let loaded = false;
    feed.onopen = async () => {
      setConnection("live");
      loaded = false;
      pending = [];
      try {
        const response = await fetch("/emulator/state", { cache: "no-store" });
        applySnapshot(await response.json());
      } catch (error) {
        setConnection("offline");
        return;
      }
      loaded = true;
      pending.forEach(applyEvent);
      pending = [];
    };
    feed.onmessage = (e) => {
      let event;
      try {
        event = JSON.parse(e.data);
      } catch {
        return;
      }
      if (loaded) applyEvent(event);
      else pending.push(event);
    };
    feed.onerror = () => setConnection(feed.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
  }

  function setConnection(state) {
    const el = $("#connection");
    el.dataset.state = state;
    el.textContent = { live: "live", reconnecting: "reconnecting…", offline: "offline" }[state] || state;
  }

  async function loadInfo() {
    try {
      const response = await fetch("/playground/info", { cache: "no-store" });
      Object.assign(store.info, await response.json());
    } catch {
      return;
    }
    const { info } = store;
    const badge = $("#model-badge");
    badge.hidden = false;
    if (info.demo) {
      badge.classList.add("demo");
      badge.textContent = "Offline demo model";
      badge.title = "AGENTBOT_MODEL is not set: answers come from the built-in demo model, with no network and no key.";
      $("#demo-note").hidden = false;
    } else {
      badge.classList.remove("demo");
      badge.textContent = `Model: ${info.model}`;
      badge.title = "The model the /ask agent uses (AGENTBOT_MODEL or agentbot.toml)";
    }
    $("#sidebar-channel").textContent = info.channel.name;
    $("#sidebar-dm").textContent = info.dm.name;
    showConversationChrome();
    scheduleRender();
  }

  // ---- conversations: #general, and the DM with the bot ("agentbot" under Apps) -----------

  const conversation = () => (store.current === "dm" ? store.info.dm : store.info.channel);

  function showConversationChrome() {
    const dm = store.current === "dm";
    const { name } = conversation();
    for (const link of document.querySelectorAll("[data-conversation]")) {
      const active = link.dataset.conversation === store.current;
      link.classList.toggle("active", active);
      if (active) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    $("#title-hash").hidden = dm;
    $("#title-avatar").hidden = !dm;
    $("#channel-name").textContent = name;
    $("#channel-topic").textContent = dm
      ? "Your direct messages with the bot: it answers every message"
      : "The real bot, answering in an emulated Slack";
    $("#channel-intro").hidden = dm;
    $("#dm-intro").hidden = !dm;
    $("#thread-topic").textContent = dm ? name : `#${name}`;
    const input = $("#composer-input");
    input.placeholder = dm ? `Message ${name}` : `Message #${name} — try /ask …`;
    input.setAttribute("aria-label", dm ? `Message ${name}` : `Message #${name}`);
    document.title = `${dm ? name : `#${name}`} · agentbot playground`;
  }

  function switchConversation(which) {
    const next = which === "dm" ? "dm" : "channel";
    if (next !== store.current) {
      store.current = next;
      closeThread();
      for (const view of views) view.reset();
      channelView.pinned = true;
    }
    const hash = next === "dm" ? "#dm" : "";
    if (location.hash !== hash) history.replaceState(null, "", hash || location.pathname + location.search);
    showConversationChrome();
    scheduleRender();
    $("#composer-input").focus();
  }

  // ---- text rendering ------------------------------------------------------------------

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const esc = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  // Slack's entity escapes, back to the characters they stand for (Slack shows them so).
  const unslack = (text) => text.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");

  const askedUsers = new Set();
  let usersQueued = false;

  // A person's name as Slack shows it in a mention; an id this page does not know yet is
  // looked up once (the emulator knows every user that users.info knows).
  function userName(id, label) {
    if (id === store.info.user.id) return store.info.user.name;
    const user = store.info.users[id];
    if (user) return user.name;
    if (!askedUsers.has(id)) {
      askedUsers.add(id);
      if (!usersQueued) {
        usersQueued = true;
        setTimeout(() => {
          usersQueued = false;
          loadInfo();
        }, 200);
      }
    }
    return label ? label.replace(/^@/, "") : id;
  }

  function channelName(id, label) {
    if (label) return label;
    const known = [store.info.channel, store.info.dm].find((c) => c && c.id === id);
    return known ? known.name : id;
  }

  function link(url, labelHtml) {
    if (!/^(https?:\/\/|mailto:)/i.test(url)) return labelHtml;
    return `<a href="${esc(url)}" target="_blank" rel="noopener noreferrer">${labelHtml}</a>`;
  }

  // ---- Slack's date formatting: <!date^1732450000^{date_short_pretty} {time}|fallback> ----

  const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
  const WEEKDAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
  const ordinal = (n) => {
    const tens = n % 100;
    const suffix = tens >= 11 && tens <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
    return `${n}${suffix}`;
  };
  const pad = (n) => String(n).padStart(2, "0");

  function relativeDay(date) {
    const day = (d) => Math.floor(new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime() / 86_400_000);
    return { 0: "today", [-1]: "yesterday", 1: "tomorrow" }[day(date) - day(new Date())] || null;
  }

  function ago(date) {
    const seconds = Math.round((date.getTime() - Date.now()) / 1000);
    const steps = [["year", 31_536_000], ["month", 2_592_000], ["day", 86_400], ["hour", 3600], ["minute", 60], ["second", 1]];
    const [unit, size] = steps.find(([, size]) => Math.abs(seconds) >= size) || ["second", 1];
    return new Intl.RelativeTimeFormat("en", { numeric: "auto" }).format(Math.round(seconds / size), unit);
  }

  const DATE_TOKENS = {
    date_num: (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`,
    date: (d) => `${MONTHS[d.getMonth()]} ${ordinal(d.getDate())}, ${d.getFullYear()}`,
    date_short: (d) => `${MONTHS[d.getMonth()].slice(0, 3)} ${d.getDate()}, ${d.getFullYear()}`,
    date_long: (d) => `${WEEKDAYS[d.getDay()]}, ${DATE_TOKENS.date(d)}`,
    date_pretty: (d) => relativeDay(d) || DATE_TOKENS.date(d),
    date_short_pretty: (d) => relativeDay(d) || DATE_TOKENS.date_short(d),
    date_long_pretty: (d) => relativeDay(d) || DATE_TOKENS.date_long(d),
    time: (d) => d.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" }),
    time_secs: (d) => d.toLocaleTimeString([], { hour: "numeric", minute: "2-digit", second: "2-digit" }),
    ago,
  };

  // The date in the reader's time zone as Slack writes it, or null when Slack would show the
  // fallback (a bad timestamp or an unknown token).
  function slackDate(seconds, format) {
    if (!/^-?\d{1,12}$/.test(seconds)) return null;
    const date = new Date(Number(seconds) * 1000);
    let unknown = false;
    const text = String(format || "").replace(/\{(\w+)\}/g, (whole, token) => {
      const render = DATE_TOKENS[token];
      if (!render) unknown = true;
      return render ? render(date) : whole;
    });
    if (unknown || !text.trim()) return null;
    return text.charAt(0).toUpperCase() + text.slice(1); // Slack capitalises the first letter
  }

  function dateHtml(target, label) {
    const [, seconds, format, url] = target.split("^");
    const shown = slackDate(seconds, format);
    if (shown === null) return esc(label || "");
    const iso = new Date(Number(seconds) * 1000).toISOString();
    const html = `<time class="slack-date" datetime="${esc(iso)}" title="${esc(label || iso)}">${esc(shown)}</time>`;
    return url ? link(url, html) : html;
  }

  // One piece of Slack's angle-bracket markup (the text between < and >, entities still
  // escaped) as HTML, or null when it is not markup (then it shows as typed).
  function reference(body) {
    const bar = body.indexOf("|");
    const target = bar < 0 ? body : body.slice(0, bar);
    const label = bar < 0 ? "" : unslack(body.slice(bar + 1));
    let m;
    if ((m = target.match(/^@([UW][A-Z0-9]+)$/))) {
      return `<span class="mention" data-user="${esc(m[1])}">@${esc(userName(m[1], label))}</span>`;
    }
    if ((m = target.match(/^#([CDG][A-Z0-9]+)$/))) {
      return `<span class="mention channel">#${esc(channelName(m[1], label))}</span>`;
    }
    if ((m = target.match(/^!(here|channel|everyone)$/))) {
      return `<span class="mention broadcast">@${m[1]}</span>`;
    }
    if ((m = target.match(/^!subteam\^([A-Z0-9]+)$/))) {
      return `<span class="mention">@${esc((label || m[1]).replace(/^@/, ""))}</span>`;
    }
    if (target.startsWith("!date^")) return dateHtml(target, label);
    if (target.startsWith("!")) return label ? esc(label) : null;
    if (/^(https?:\/\/|mailto:)/i.test(target)) {
      const url = unslack(target);
      return link(url, esc(label || url));
    }
    return null;
  }

  // Replace the markup in `text` by slots that `keep` fills with its HTML.
  const refsIn = (text, keep) =>
    text.replace(/<([^<>\n]+)>/g, (whole, body) => {
      const html = reference(body);
      return html === null ? whole : keep(html);
    });

  function withSlots(raw, build) {
    const slots = [];
    const keep = (html) => `\u0000${slots.push(html) - 1}\u0000`;
    // A slot may hold others (a mention in a code span): fill them too.
    const fill = (html) => html.replace(/\u0000(\d+)\u0000/g, (_, i) => fill(slots[Number(i)]));
    return fill(build(String(raw).replace(/\u0000/g, ""), keep));
  }

  // Code as Slack shows it: markup resolved (mentions, links, dates), entities as characters,
  // no other formatting.
  const codeHtml = (raw) => withSlots(raw, (s, keep) => esc(unslack(refsIn(s, keep))));

  // One line of inline formatting. `slack`: Slack mrkdwn (no Markdown [label](url) links).
  // Markup is read before entities are turned back into characters, so that escaped text
  // such as &lt;!here&gt; shows as typed and never becomes a mention.
  function inline(raw, { slack = false } = {}) {
    return withSlots(raw, (text, keep) => {
      let s = refsIn(text, keep);
      s = s.replace(/`([^`\n]+)`/g, (_, code) => keep(`<code>${esc(unslack(code))}</code>`));
      s = unslack(s);
      if (!slack) {
        s = s.replace(/\[([^\]\n]+)\]\(((?:https?:\/\/|mailto:)[^)\s]+)\)/g, (_, label, url) => keep(link(url, esc(label))));
      }
      s = s.replace(/\b(?:https?:\/\/)[^\s<>"'`\u0000]+/g, (url) => {
        const trail = url.match(/[.,;:!?)\]]+$/);
        const bare = trail ? url.slice(0, -trail[0].length) : url;
        return keep(link(bare, esc(bare))) + (trail ? trail[0] : "");
      });
      return esc(s)
        .replace(/\*\*(?=\S)(.+?)(?<=\S)\*\*/g, "<strong>$1</strong>")
        .replace(/(^|[^\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])/g, "$1<strong>$2</strong>")
        .replace(/(^|[^\w])__(?=\S)(.+?)(?<=\S)__(?!\w)/g, "$1<strong>$2</strong>")
        .replace(/(^|[^\w])_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)/g, "$1<em>$2</em>")
        .replace(/(^|[^\w~])~~?(?=[^\s~])(.+?)(?<=[^\s~])~~?(?![\w~])/g, "$1<del>$2</del>");
    });
  }

  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^\s{0,3}>\s?/;
  const ITEM = /^(\s*)([-*+•]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_RULE = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;
  const indentOf = (line) => line.match(/^\s*/)[0].replace(/\t/g, "    ").length;

  function startsBlock(lines, i) {
    const line = lines[i];
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line) || isTable(lines, i);
  }

  function isTable(lines, i) {
    return lines[i].includes("|") && i + 1 < lines.length && lines[i + 1].includes("-") && TABLE_RULE.test(lines[i + 1]);
  }

  // Markdown (a `markdown` block): paragraphs, headings, lists, quotes, code, tables.
  function markdown(src) {
    const lines = String(src).replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = line.match(FENCE))) {
        const fence = m[1];
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(fence); i++) body.push(lines[i]);
        i++; // the closing fence; a fence still open (mid-stream) runs to the end
        const lang = m[2] ? ` data-lang="${esc(m[2])}"` : "";
        out.push(`<pre class="code"${lang}><code>${esc(unslack(body.join("\n")))}</code></pre>`);
      } else if (!line.trim()) {
        i++;
      } else if ((m = line.match(HEADING))) {
        const tag = `h${Math.min(m[1].length + 2, 6)}`;
        out.push(`<${tag} class="md-heading">${inline(m[2])}</${tag}>`);
        i++;
      } else if (RULE.test(line)) {
        out.push("<hr>");
        i++;
      } else if (QUOTE.test(line)) {
        const body = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) body.push(lines[i].replace(QUOTE, ""));
        out.push(`<blockquote>${markdown(body.join("\n"))}</blockquote>`);
      } else if (ITEM.test(line)) {
        const [html, next] = list(lines, i);
        out.push(html);
        i = next;
      } else if (isTable(lines, i)) {
        const [html, next] = table(lines, i);
        out.push(html);
        i = next;
      } else {
        const para = [line];
        for (i++; i < lines.length && lines[i].trim() && !startsBlock(lines, i); i++) para.push(lines[i]);
        out.push(`<p>${para.map((l) => inline(l.trim())).join("<br>")}</p>`);
      }
    }
    return out.join("");
  }

  function list(lines, start) {
    const first = lines[start].match(ITEM);
    const base = indentOf(lines[start]);
    const ordered = /\d/.test(first[2]);
    const items = [];
    let i = start;
    while (i < lines.length) {
      const line = lines[i];
      const m = line.match(ITEM);
      if (m && indentOf(line) <= base + 1) {
        if (/\d/.test(m[2]) !== ordered) break;
        items.push({ text: m[3], children: [] });
        i++;
      } else if (line.trim() && indentOf(line) > base) {
        items[items.length - 1].children.push(line);
        i++;
      } else if (!line.trim()) {
        let j = i + 1;
        while (j < lines.length && !lines[j].trim()) j++;
        const next = lines[j];
        const continues = next !== undefined && (indentOf(next) > base || (ITEM.test(next) && /\d/.test(next.match(ITEM)[2]) === ordered));
        if (!continues) break;
        i = j;
      } else {
        break;
      }
    }
    const body = items
      .map((item) => {
        const cut = Math.min(...item.children.map(indentOf), Infinity);
        const children = item.children.length ? markdown(item.children.map((l) => l.slice(cut)).join("\n")) : "";
        return `<li>${inline(item.text)}${children}</li>`;
      })
      .join("");
    const number = ordered ? parseInt(first[2], 10) : 1;
    const tag = ordered ? "ol" : "ul";
    return [`<${tag}${ordered && number !== 1 ? ` start="${number}"` : ""}>${body}</${tag}>`, i];
  }

  function table(lines, start) {
    const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
    const head = cells(lines[start]);
    const rows = [];
    let i = start + 2;
    for (; i < lines.length && lines[i].includes("|") && lines[i].trim(); i++) rows.push(cells(lines[i]));
    const th = head.map((c) => `<th>${inline(c)}</th>`).join("");
    const trs = rows.map((r) => `<tr>${r.map((c) => `<td>${inline(c)}</td>`).join("")}</tr>`).join("");
    return [`<div class="table-wrap"><table><thead><tr>${th}</tr></thead><tbody>${trs}</tbody></table></div>`, i];
  }

  // Slack mrkdwn (section and context texts, plain message text): ``` code, > quotes, lines.
  function mrkdwn(src) {
    const parts = String(src).split("```");
    return parts
      .map((part, index) => {
        if (index % 2 === 1) return `<pre class="code"><code>${codeHtml(part.replace(/^\n/, ""))}</code></pre>`;
        const lines = (index > 0 ? part.replace(/^\n/, "") : part).split("\n");
        const out = [];
        let quote = [];
        const flush = () => {
          if (quote.length) out.push(`<blockquote>${quote.join("<br>")}</blockquote>`);
          quote = [];
        };
        lines.forEach((line, n) => {
          const quoted = line.match(/^(?:&gt;|>)\s?(.*)$/);
          if (quoted) {
            quote.push(inline(quoted[1], { slack: true }));
            return;
          }
          flush();
          out.push(inline(line, { slack: true }) + (n < lines.length - 1 ? "<br>" : ""));
        });
        flush();
        return out.join("");
      })
      .join("");
  }

  function textObject(text) {
    if (!text || typeof text.text !== "string") return "";
    return text.type === "plain_text" ? esc(text.text).replace(/\n/g, "<br>") : mrkdwn(text.text);
  }

  // ---- messages --------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function timeOf(ts) {
    const date = new Date(Number(String(ts).split(".")[0]) * 1000);
    return date.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
  }

  const STOP_ACTION = "stop_run";
  const STOP_PENDING_MS = 60_000; // a stop the bot never confirms stops showing after this

  // The Stop buttons of a message (a live run has one; its value is the run's id).
  const stopButtons = (message) =>
    (message.blocks || [])
      .filter((b) => b && b.type === "actions")
      .flatMap((b) => (b.elements || []).filter((e) => e && e.action_id === STOP_ACTION));

  const isLive = (message) => stopButtons(message).length > 0;

  function stopRequested(runId) {
    const at = store.stopping.get(runId);
    if (at === undefined) return false;
    if (Date.now() - at < STOP_PENDING_MS) return true;
    store.stopping.delete(runId);
    return false;
  }

  // Stop was pressed here for this live message: it shows "Stopping…" until the bot's own
  // edit ends it (the bot's edits wait for their turn in Slack's budget, one per message).
  const isStopping = (message) => stopButtons(message).some((b) => stopRequested(b.value));

  // Stop on a message stops its run; on a thread's parent (a team, a pipeline, a comparison)
  // it stops every part, so the live replies show it too.
  function markStopping(channel, ts, runId) {
    const ids = [runId];
    const message = store.messages.get(`${channel}/${ts}`);
    if (message && !message.thread_ts) {
      for (const reply of store.messages.values()) {
        if (reply.channel === channel && reply.thread_ts === ts) ids.push(...stopButtons(reply).map((b) => b.value));
      }
    }
    const at = Date.now();
    ids.forEach((id) => store.stopping.set(id, at));
    store.stopVersion += 1;
    scheduleRender();
    return ids;
  }

  function unmarkStopping(ids) {
    ids.forEach((id) => store.stopping.delete(id));
    store.stopVersion += 1;
    scheduleRender();
  }

  function button(element, message) {
    const node = el("button", `block-button ${element.style === "danger" ? "danger" : element.style === "primary" ? "primary" : ""}`.trim());
    node.type = "button";
    node.textContent = (element.text && element.text.text) || "Button";
    if (element.action_id === STOP_ACTION && stopRequested(element.value)) {
      node.textContent = "Stopping…";
      node.disabled = true;
      node.classList.add("pending");
    }
    node.dataset.actionId = element.action_id || "";
    node.dataset.value = element.value || "";
    node.dataset.ts = message.ts;
    node.dataset.channel = message.channel;
    return node;
  }

  const TASK_ICONS = { pending: "○", in_progress: "◌", complete: "✓", error: "⚠" };

  // Task cards a native stream sent (task_update chunks): one box for "plan", a card each
  // for "timeline".
  function tasks(message) {
    const list = Object.values(message.tasks || {});
    if (!list.length) return null;
    const mode = message.task_display_mode === "plan" ? "plan" : "timeline";
    const node = el("div", `tasks tasks-${mode}`);
    if (mode === "plan") node.append(el("div", "tasks-title", "Plan"));
    for (const task of list) {
      const card = el("div", `task task-${task.status}`);
      card.append(el("span", "task-icon", TASK_ICONS[task.status] || "○"));
      const words = el("div", "task-words");
      words.append(el("div", "task-title", task.title || ""));
      const note = task.output || task.details;
      if (note) words.append(el("div", "task-note", note));
      card.append(words);
      node.append(card);
    }
    return node;
  }

  function blocks(message) {
    const frag = document.createDocumentFragment();
    const list = Array.isArray(message.blocks) ? message.blocks : [];
    if (!list.length) {
      const text = el("div", "block text");
      text.innerHTML = mrkdwn(message.text || "");
      frag.append(text);
      return frag;
    }
    for (const block of list) {
      if (!block || typeof block !== "object") continue;
      let node;
      switch (block.type) {
        case "markdown":
          node = el("div", "block markdown");
          node.innerHTML = markdown(block.text || "");
          break;
        case "section":
          node = el("div", "block section");
          if (block.text) {
            const text = el("div", "section-text");
            text.innerHTML = textObject(block.text);
            node.append(text);
          }
          if (Array.isArray(block.fields)) {
            const fields = el("div", "fields");
            for (const f of block.fields) {
              const cell = el("div", "field");
              cell.innerHTML = textObject(f);
              fields.append(cell);
            }
            node.append(fields);
          }
          if (block.accessory && block.accessory.type === "button") {
            node.classList.add("has-accessory"); // Slack puts the accessory on the right
            node.append(button(block.accessory, message));
          }
          break;
        case "context":
          node = el("div", "block context");
          for (const element of block.elements || []) {
            if (element && (element.type === "mrkdwn" || element.type === "plain_text")) {
              const span = el("span", "context-item");
              span.innerHTML = textObject(element);
              node.append(span);
            }
          }
          break;
        case "actions":
          node = el("div", "block actions");
          for (const element of block.elements || []) {
            if (element && element.type === "button") node.append(button(element, message));
          }
          break;
        case "header":
          node = el("div", "block header", (block.text && block.text.text) || "");
          break;
        case "divider":
          node = el("hr", "block divider");
          break;
        default:
          node = el("div", "block unsupported", `[${block.type} block]`);
      }
      frag.append(node);
    }
    return frag;
  }

  function avatar(isBot, name) {
    const node = el("div", `avatar ${isBot ? "bot-avatar" : "user-avatar"}`);
    if (!isBot) node.textContent = (name || "?").slice(0, 1).toUpperCase();
    node.setAttribute("aria-hidden", "true");
    return node;
  }

  function fillMessage(node, message, { inThread }) {
    const isBot = Boolean(message.bot_id);
    const classes = ["message"];
    if (isBot) classes.push("from-bot");
    if (message.ephemeral_for) classes.push("ephemeral");
    const live = message.streaming || isLive(message);
    const stopping = isStopping(message);
    if (live) classes.push("live");
    if (stopping) classes.push("stopping");
    node.removeAttribute("data-replies");
    if (inThread && message.ts === store.openThread) {
      classes.push("thread-parent");
      const count = message.reply_count || 0;
      if (count) node.dataset.replies = `${count} ${count === 1 ? "reply" : "replies"}`;
    }
    node.className = classes.join(" ");
    node.dataset.ts = message.ts;
    node.replaceChildren();

    const user = store.info.users[message.user] || {};
    const name = isBot ? store.info.bot.name : user.real_name || userName(message.user);
    node.append(avatar(isBot, name));

    const body = el("div", "message-body");
    if (message.ephemeral_for) {
      const note = el("div", "ephemeral-note");
      note.append(el("span", "eye", "👁"), el("span", "", "Only visible to you"));
      const dismiss = el("button", "link-button dismiss", "Dismiss");
      dismiss.type = "button";
      dismiss.dataset.dismiss = keyOf(message);
      note.append(dismiss);
      body.append(note);
    }
    const head = el("div", "message-head");
    head.append(el("span", "name", name));
    if (isBot) head.append(el("span", "app-badge", "APP"));
    const time = el("time", "time", timeOf(message.ts));
    time.title = message.ts;
    head.append(time);
    body.append(head);

    const content = el("div", "content");
    const taskList = tasks(message);
    if (taskList) content.append(taskList);
    content.append(blocks(message));
    body.append(content);
    if (stopping) showStopping(content);
    else if (live) startTicker(content, message);

    if (!inThread && !message.thread_ts && message.reply_count > 0) {
      const replies = el("button", "replies");
      replies.type = "button";
      replies.dataset.thread = message.ts;
      replies.append(el("span", "mini-avatar bot-avatar"), el("span", "replies-count", `${message.reply_count} ${message.reply_count === 1 ? "reply" : "replies"}`));
      if (message.latest_reply) replies.append(el("span", "replies-last", `Last reply ${timeOf(message.latest_reply)}`));
      replies.append(el("span", "replies-view", "View thread"));
      body.append(replies);
    }
    node.append(body);

    if (!inThread && !message.thread_ts && !message.ephemeral_for) {
      const tools = el("div", "hover-tools");
      const reply = el("button", "tool", "💬");
      reply.type = "button";
      reply.title = "Reply in thread";
      reply.setAttribute("aria-label", "Reply in thread");
      reply.dataset.thread = message.ts;
      tools.append(reply);
      node.append(tools);
    }
  }

  // ---- live footers -----------------------------------------------------------------------
  // The bot edits a live message only when Slack's budget gives it a turn, so its footer's
  // elapsed time ("· 12 s") would stand still between edits. The page keeps it moving: from
  // the footer's own figure and the time of the edit (`updated_at`), or for a run still
  // thinking or queued, from the time the message was posted. No Slack call is spent on it.

  const LIVE_STATUS = /^(⏳|✍️)/u;
  const ELAPSED = /^(.*?)(\d+) s$/s;
  const shownElapsed = new Map(); // message key -> seconds shown last (never goes back)

  const liveFooter = (content) =>
    [...content.querySelectorAll(":scope > .block.context")].filter((n) => LIVE_STATUS.test(n.textContent.trim())).pop();

  function startTicker(content, message) {
    const footer = liveFooter(content);
    if (!footer) return;
    const text = footer.textContent.trim();
    const found = text.match(ELAPSED);
    footer.classList.add("ticking");
    footer.dataset.key = keyOf(message);
    footer.dataset.prefix = found ? found[1] : `${text} · `;
    footer.dataset.base = found ? found[2] : "0";
    footer.dataset.from = String(found ? message.updated_at || Date.now() / 1000 : Number(message.ts));
    footer.title = "Time since the run started, counted by this page between the bot's edits";
    tick(footer);
  }

  function tick(footer) {
    const since = Math.max(0, Date.now() / 1000 - Number(footer.dataset.from));
    const seconds = Math.max(Math.floor(Number(footer.dataset.base) + since), shownElapsed.get(footer.dataset.key) || 0);
    shownElapsed.set(footer.dataset.key, seconds);
    const target = footer.querySelector(".context-item") || footer;
    target.textContent = `${footer.dataset.prefix}${seconds} s`;
  }

  function showStopping(content) {
    let footer = liveFooter(content);
    if (!footer) {
      footer = el("div", "block context");
      footer.append(el("span", "context-item"));
      const actions = content.querySelector(":scope > .block.actions");
      content.insertBefore(footer, actions);
    }
    footer.classList.add("stopping-note");
    (footer.querySelector(".context-item") || footer).textContent = "⏹️ Stopping…";
  }

  const byTs = (a, b) => {
    const [as, af = ""] = String(a.ts).split(".");
    const [bs, bf = ""] = String(b.ts).split(".");
    return Number(as) - Number(bs) || Number(af.padEnd(6, "0")) - Number(bf.padEnd(6, "0"));
  };

  // A list of messages kept in step with the store: only changed messages are redrawn.
  class MessageView {
    constructor(scroller, container, select, options) {
      this.scroller = scroller;
      this.container = container;
      this.select = select;
      this.options = options;
      this.nodes = new Map();
      // Pinned to the bottom while the reader is there, as Slack does, through new messages,
      // growing answers and layout changes (a pane opening narrows the list).
      this.pinned = true;
      scroller.addEventListener("scroll", () => {
        this.pinned = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
      });
      const follow = new ResizeObserver(() => {
        if (this.pinned) scroller.scrollTop = scroller.scrollHeight;
      });
      follow.observe(container);
      follow.observe(scroller);
    }

    reset() {
      this.nodes.clear();
      this.container.replaceChildren();
    }

    render() {
      const items = this.select().sort(byTs);
      const seen = new Set();
      let previous = null;
      for (const message of items) {
        const key = keyOf(message);
        seen.add(key);
        let entry = this.nodes.get(key);
        if (!entry) {
          entry = { node: el("div"), version: -1 };
          this.nodes.set(key, entry);
        }
        const version = `${message._v}|${store.openThread}|${Object.keys(store.info.users || {}).length}|${store.stopVersion}`;
        if (entry.version !== version) {
          fillMessage(entry.node, message, this.options);
          entry.version = version;
        }
        const wanted = previous ? previous.nextSibling : this.container.firstChild;
        if (wanted !== entry.node) this.container.insertBefore(entry.node, wanted);
        previous = entry.node;
      }
      for (const [key, entry] of this.nodes) {
        if (!seen.has(key)) {
          entry.node.remove();
          this.nodes.delete(key);
        }
      }
      if (this.pinned) this.scroller.scrollTop = this.scroller.scrollHeight;
    }
  }

  const visibleTo = (m) => !m.ephemeral_for || m.ephemeral_for === store.info.user.id;

  const channelView = new MessageView(
    $("#channel-scroll"),
    $("#channel-messages"),
    () => [...store.messages.values()].filter((m) => m.channel === conversation().id && !m.thread_ts && visibleTo(m)),
    { inThread: false },
  );

  const threadView = new MessageView(
    $("#thread-scroll"),
    $("#thread-messages"),
    () => {
      const ts = store.openThread;
      if (!ts) return [];
      return [...store.messages.values()].filter(
        (m) => m.channel === conversation().id && (m.ts === ts || m.thread_ts === ts) && visibleTo(m),
      );
    },
    { inThread: true },
  );

  const views = [channelView, threadView];
  let renderQueued = false;

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      channelView.render();
      if (store.openThread) threadView.render();
    });
  }

  function openThread(ts) {
    store.openThread = ts;
    $("#thread-pane").hidden = false;
    $("#app").classList.add("thread-open");
    threadView.reset();
    threadView.pinned = true;
    scheduleRender();
    $("#thread-input").focus();
  }

  function closeThread() {
    store.openThread = null;
    $("#thread-pane").hidden = true;
    $("#app").classList.remove("thread-open");
    threadView.reset();
    scheduleRender();
  }

  // ---- API calls panel -------------------------------------------------------------------

  let callsQueued = false;
  const MAX_CALL_ROWS = 400;

  function scheduleCalls() {
    if (callsQueued) return;
    callsQueued = true;
    requestAnimationFrame(() => {
      callsQueued = false;
      renderCalls();
    });
  }

  function outcome(call) {
    if (call.status === 429) return ["limited", `429 ${call.error || "ratelimited"}`];
    if (call.ok) return ["ok", "ok"];
    return ["error", call.error || `HTTP ${call.status}`];
  }

  function argsSummary(call) {
    const a = call.args || {};
    const parts = [];
    if (a.channel) parts.push(a.channel);
    if (a.thread_ts) parts.push("in thread");
    if (a.ts) parts.push(`…${String(a.ts).slice(-6)}`);
    const text = a.markdown_text || a.text;
    if (typeof text === "string") parts.push(`${text.length.toLocaleString()} chars`);
    return parts.join(" · ");
  }

  function renderCalls() {
    const calls = [...store.calls.values()].sort((a, b) => a.at - b.at);
    const list = $("#calls");
    // Times are the emulator's clock when Slack received the call, from the playground's start.
    const origin = store.origin ?? (calls.length ? calls[0].at : 0);
    const errors = calls.filter((c) => !c.ok && c.status !== 429).length;
    const limited = calls.filter((c) => c.status === 429).length;
    $("#call-count").textContent = String(calls.length);
    const summary = [`${calls.length} ${calls.length === 1 ? "call" : "calls"}`];
    if (errors) summary.push(`${errors} error${errors === 1 ? "" : "s"}`);
    if (limited) summary.push(`${limited} rate-limited`);
    $("#calls-summary").textContent = calls.length ? summary.join(" · ") : "none yet";
    $("#calls-summary").classList.toggle("has-limited", limited > 0);

    const shown = calls.slice(-MAX_CALL_ROWS).reverse();
    const rows = shown.map((call, index) => {
      const [kind, label] = outcome(call);
      const row = el("li", `call ${kind}`);
      const previous = shown[index + 1];
      const at = Math.max(0, call.at - origin);
      const when = el("span", "call-time", `${at.toFixed(3)} s`);
      const gap = previous ? `, ${Math.round((call.at - previous.at) * 1000).toLocaleString()} ms after the previous call` : "";
      when.title = `Received ${at.toFixed(3)} s after the playground started${gap}`;
      const method = el("span", "call-method", call.method);
      const result = el("span", `call-outcome ${kind}`, label);
      const args = el("span", "call-args", argsSummary(call));
      row.title = JSON.stringify(call.args || {}, null, 1).slice(0, 2000);
      row.append(when, method, result, args);
      return row;
    });
    list.replaceChildren(...rows);
  }

  // ---- sending -------------------------------------------------------------------------

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) throw new Error((data && data.error) || `HTTP ${response.status}`);
    return data;
  }

  function localNotice(text, threadTs) {
    // A message only this page shows (the server could not be reached, for instance).
    const now = Date.now();
    const message = {
      channel: conversation().id,
      ts: `${Math.floor(now / 1000)}.${String((now % 1000) * 1000 + (store.localSeq++ % 1000)).padStart(6, "0")}`,
      user: store.info.bot.id,
      bot_id: "local",
      text,
      blocks: [],
      thread_ts: threadTs || null,
      ephemeral_for: store.info.user.id,
      reply_count: 0,
      _local: true,
    };
    message._v = ++store.version;
    store.messages.set(keyOf(message), message);
    scheduleRender();
  }

  async function send(text, threadTs) {
    try {
      await postJson("/playground/send", { text, channel: conversation().id, thread_ts: threadTs || undefined });
    } catch (error) {
      localNotice(`⚠️ Could not send that: ${error.message}`, threadTs);
    }
  }

  function setupComposer(form, input, threadTs) {
    const menu = form.querySelector(".command-menu");
    const resize = () => {
      input.style.height = "auto";
      input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
    };
    const updateMenu = () => {
      const value = input.value;
      const matches = /^\/\S*$/.test(value) ? store.info.commands.filter((c) => c.command.startsWith(value)) : [];
      menu.hidden = matches.length === 0;
      menu.replaceChildren(
        ...matches.map((c) => {
          const item = el("button", "command-item");
          item.type = "button";
          item.dataset.fill = `${c.command} `;
          const args = c.usage.startsWith(c.command) ? c.usage.slice(c.command.length).trim() : c.usage;
          item.append(el("span", "command-name", c.command), el("span", "command-usage", args), el("span", "command-model", c.model || c.kind));
          return item;
        }),
      );
    };
    const submit = () => {
      const text = input.value;
      if (!text.trim()) return;
      input.value = "";
      resize();
      updateMenu();
      send(text, threadTs());
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        submit();
      } else if (e.key === "Tab" && !menu.hidden) {
        e.preventDefault();
        input.value = menu.querySelector(".command-item").dataset.fill;
        updateMenu();
      } else if (e.key === "Escape" && threadTs() && input.id === "thread-input") {
        closeThread();
      }
    });
    input.addEventListener("input", () => {
      resize();
      updateMenu();
    });
    menu.addEventListener("click", (e) => {
      const item = e.target.closest("[data-fill]");
      if (!item) return;
      input.value = item.dataset.fill;
      updateMenu();
      input.focus();
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      submit();
    });
  }

  async function clickButton(node) {
    const { actionId, value, ts, channel } = node.dataset;
    node.disabled = true;
    node.classList.add("pending");
    // Shown at once, as the click is sent: the bot's edits follow in their turn.
    const stopping = actionId === STOP_ACTION ? markStopping(channel, ts, value) : [];
    try {
      const answer = await postJson("/playground/action", { action_id: actionId, value, message_ts: ts, channel });
      if (answer && answer.status !== 200) unmarkStopping(stopping);
      if (!stopping.length) {
        // As in Slack, a button is ready again once the app has answered the click.
        node.disabled = false;
        node.classList.remove("pending");
      }
    } catch (error) {
      localNotice(`⚠️ The button did not work: ${error.message}`);
      unmarkStopping(stopping);
      node.disabled = false;
      node.classList.remove("pending");
    }
  }

  function onMessagesClick(e) {
    const actionButton = e.target.closest("button[data-action-id]");
    if (actionButton) return clickButton(actionButton);
    const thread = e.target.closest("[data-thread]");
    if (thread) return openThread(thread.dataset.thread);
    const dismiss = e.target.closest("[data-dismiss]");
    if (dismiss) {
      store.messages.delete(dismiss.dataset.dismiss);
      scheduleRender();
    }
    return undefined;
  }

  // ---- start -----------------------------------------------------------------------------

  function start() {
    setupComposer($("#channel-composer"), $("#composer-input"), () => null);
    setupComposer($("#thread-composer"), $("#thread-input"), () => store.openThread);
    $("#channel-messages").addEventListener("click", onMessagesClick);
    $("#thread-messages").addEventListener("click", onMessagesClick);
    $("#close-thread").addEventListener("click", closeThread);
    for (const link of document.querySelectorAll("[data-conversation]")) {
      link.addEventListener("click", (e) => {
        e.preventDefault();
        switchConversation(link.dataset.conversation);
      });
    }
    window.addEventListener("hashchange", () => switchConversation(location.hash === "#dm" ? "dm" : "channel"));
    setInterval(() => document.querySelectorAll(".block.context.ticking").forEach(tick), 1000);
    $("#toggle-calls").addEventListener("click", () => {
      const open = $("#app").classList.toggle("calls-open");
      $("#toggle-calls").setAttribute("aria-pressed", String(open));
    });
    document.querySelectorAll(".try[data-fill]").forEach((node) =>
      node.addEventListener("click", () => {
        const input = $("#composer-input");
        input.value = node.textContent;
        input.focus();
      }),
    );
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && store.openThread) closeThread();
    });
    showConversationChrome();
    loadInfo();
    connect();
    $("#composer-input").focus();
  }

  // For tests and the curious: the rendering functions, side-effect free.
  window.agentbotPlayground = { markdown, mrkdwn, inline, store };
  start();
})();
