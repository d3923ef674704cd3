// The chat page: the JSON subprotocol (chat.v1.json) over one WebSocket to
// the page's own origin. Everything a peer sends is put in the page as text
// (textContent), never as HTML: the Content-Security-Policy and Trusted
// Types stop any script that slipped through anyway.
"use strict";

(() => {
  const SUBPROTOCOL = "chat.v1.json";
  const NICK_KEY = "chat.nick";
  // Full-jitter backoff: wait a random time up to min(CAP, BASE * 2^n).
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  // The room list is refreshed this often while connected (joins and
  // leaves elsewhere are not announced to this room).
  const ROOMS_REFRESH_MS = 30000;
  // Lines kept in the page; older ones are removed from the top.
  const MAX_LINES = 2000;
  const DEFAULT_ROOM = "#lobby";
  // Lines asked for each time "Earlier messages" is pressed.
  const OLDER_PAGE = 50;

  const $ = (id) => document.getElementById(id);
  const log = $("log");
  const sendForm = $("send-form");
  const input = $("message");
  const sendButton = $("send");
  const stateEl = $("state");
  const roomEl = $("room");
  const nickForm = $("nick-form");
  const nickInput = $("nick");
  const joinForm = $("join-form");
  const joinInput = $("join");
  const roomsEl = $("rooms");
  const peopleEl = $("people");
  const side = $("side");
  const sideToggle = $("side-toggle");
  const olderButton = $("older");

  let ws = null;
  let connected = false;
  let stopped = false; // no more reconnecting (a 4xxx/1008 close, or /quit)
  let attempt = 0;
  let retryTimer = null;
  let roomsTimer = null;
  let me = { addr: null, nick: null };
  let room = DEFAULT_ROOM;
  let welcomed = false;
  // The last welcome's reclaim token: shown on reconnecting, it gives this
  // page its place (nickname, room) back with nothing announced.
  let reclaim = null;
  // Each room's epoch, as the welcome or joining it told: a room whose
  // epoch changed lost its history, so its numbers start afresh.
  const epochs = new Map();
  // A page of earlier lines asked for: { room, before } until it arrives.
  let olderPending = null;
  // Rooms whose history this page has shown back to the beginning.
  const noOlder = new Set();
  // The highest seq shown per room: a line at or below it is not shown
  // again (history on joining and /resume replies overlap what we have).
  const lastSeq = new Map();
  // Replies the page asked for itself go to the side panel, not the log.
  const quiet = { who: 0, rooms: 0 };
  // The user typed /history: that batch is shown even where it repeats.
  let forceHistory = 0;
  // The history batch being received: how many lines are left in it.
  let batch = null;
  const people = new Map(); // addr -> nick (or null)
  let lastDay = null;
  let unread = 0;
  const sent = []; // lines sent, for Up and Down
  let recall = -1;

  function storedNick() {
    try {
      return localStorage.getItem(NICK_KEY);
    } catch {
      return null;
    }
  }

  function storeNick(nick) {
    try {
      localStorage.setItem(NICK_KEY, nick);
    } catch {
      // Private mode or storage off: the nickname is not remembered.
    }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A nickname, isolated for bidirectional text, coloured by its name.
  function nickNode(nick, addr) {
    const name = nick || addr;
    const node = el("bdi", "nick c" + (hash(name) % 8), name);
    node.title = addr;
    return node;
  }

  function hash(s) {
    let h = 0;
    for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0;
    return h;
  }

  function time(ts) {
    const d = new Date(ts);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  }

  function nearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  function append(li, ts) {
    const stick = nearBottom();
    const when = ts ? new Date(ts) : new Date();
    const day = when.toDateString();
    if (day !== lastDay) {
      if (lastDay !== null) {
        log.append(
          el(
            "li",
            "separator",
            when.toLocaleDateString([], { weekday: "long", day: "numeric", month: "long", year: "numeric" }),
          ),
        );
      }
      lastDay = day;
    }
    log.append(li);
    // Trimmed only while following the newest lines: someone reading
    // earlier ones keeps them.
    while (stick && log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    if (stick) log.scrollTop = log.scrollHeight;
    if (document.hidden && !li.classList.contains("history")) {
      unread += 1;
      document.title = `(${unread}) chat`;
    }
  }

  function notice(text, kind = "notice") {
    const li = el("li", kind);
    li.append(el("span", "time", time(Date.now())), text);
    append(li);
  }

  function separator(text) {
    append(el("li", "separator", text));
  }

  function mentions(text) {
    if (!me.nick) return false;
    const escaped = me.nick.replace(/[-_]/g, "\\$&");
    return new RegExp(`(^|[^A-Za-z0-9_-])${escaped}($|[^A-Za-z0-9_-])`, "i").test(text);
  }

  function lineNode(ev) {
    const li = el("li", ev.type === "action" ? "action" : "message");
    li.dataset.seq = String(ev.seq);
    li.dataset.room = ev.room;
    if (ev.history) li.classList.add("history");
    if (ev.from !== me.addr && mentions(ev.text)) li.classList.add("mention");
    li.append(el("span", "time", time(ev.ts)));
    if (ev.type === "action") {
      li.append("* ", nickNode(ev.nick, ev.from), " ", ev.text);
    } else {
      li.append(nickNode(ev.nick, ev.from), el("span", "addr", ` ${ev.from}`), ": ", ev.text);
    }
    return li;
  }

  function showLine(ev) {
    const seen = lastSeq.get(ev.room) || 0;
    const forced = batch && batch.force;
    if (ev.seq <= seen && !forced) return;
    if (ev.seq > seen) lastSeq.set(ev.room, ev.seq);
    if (batch && batch.shown === 0) separator(`history of ${batch.room}`);
    if (batch) batch.shown += 1;
    append(lineNode(ev), ev.ts);
    updateOlder();
  }

  // The oldest line of the current room in the log, if any.
  function oldestShown() {
    for (const li of log.querySelectorAll("li[data-seq]")) {
      if (li.dataset.room === room) return Number(li.dataset.seq);
    }
    return null;
  }

  // "Earlier messages" is offered while the room's first line is not shown.
  function updateOlder() {
    const oldest = oldestShown();
    const more = oldest !== null && oldest > 1 && !noOlder.has(room);
    olderButton.hidden = !more;
    olderButton.disabled = !connected || olderPending !== null;
  }

  function askOlder() {
    const before = oldestShown();
    if (before === null || olderPending !== null) return;
    if (send(`/history ${OLDER_PAGE} before ${before}`)) {
      olderPending = { room, before };
      updateOlder();
    }
  }

  // A page of earlier lines goes above what is shown, keeping the lines
  // in view where they were.
  function showOlder(lines) {
    const pending = olderPending;
    olderPending = null;
    if (!pending) return;
    if (lines.length === 0 || lines[0].seq <= 1) noOlder.add(pending.room);
    if (lines.length > 0 && pending.room === room) {
      const block = document.createDocumentFragment();
      block.append(el("li", "separator", `earlier in ${pending.room}`));
      for (const ev of lines) {
        const li = lineNode(ev);
        li.classList.add("history");
        block.append(li);
      }
      const height = log.scrollHeight;
      log.prepend(block);
      log.scrollTop += log.scrollHeight - height;
    }
    updateOlder();
  }

  function who(nick, addr) {
    return nick ? `${nick} (${addr})` : addr;
  }

  function renderPeople() {
    peopleEl.replaceChildren();
    const sorted = [...people].sort((a, b) => (a[1] || a[0]).localeCompare(b[1] || b[0]));
    for (const [addr, nick] of sorted) {
      const li = el("li");
      li.append(el("bdi", "", nick || addr));
      if (nick) li.append(el("span", "addr", ` ${addr}`));
      if (addr === me.addr) li.append(el("span", "addr", " (you)"));
      peopleEl.append(li);
    }
    $("people-title").textContent = `Here (${people.size})`;
  }

  function renderRooms(rooms) {
    roomsEl.replaceChildren();
    for (const r of rooms) {
      const li = el("li");
      const button = el("button", "", `${r.name} (${r.members})`);
      button.type = "button";
      if (r.name === room) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => send(`/join ${r.name}`));
      li.append(button);
      roomsEl.append(li);
    }
  }

  function setRoom(name) {
    room = name;
    roomEl.textContent = name;
    for (const b of roomsEl.querySelectorAll("button")) {
      if (b.textContent.startsWith(`${name} (`)) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    }
    updateOlder();
  }

  function setState(state, text) {
    stateEl.dataset.state = state;
    stateEl.textContent = text;
    connected = state === "connected";
    sendButton.disabled = !connected;
    input.setAttribute("aria-disabled", connected ? "false" : "true");
    updateOlder();
  }

  function send(line) {
    if (!connected || !ws) return false;
    ws.send(line);
    return true;
  }

  function quietly(command) {
    if (send(command)) quiet[command.slice(1)] += 1;
  }

  function onEvent(ev) {
    if (batch && batch.older && (ev.type === "message" || ev.type === "action") && ev.history) {
      batch.lines.push(ev);
      batch.left -= 1;
      if (batch.left <= 0) {
        const lines = batch.lines;
        batch = null;
        showOlder(lines);
      }
      return;
    }
    if (batch && (ev.type === "message" || ev.type === "action") && ev.history) {
      showLine(ev);
      batch.left -= 1;
      if (batch.left <= 0) batch = null;
      return;
    }
    batch = null;
    switch (ev.type) {
      case "welcome":
        return onWelcome(ev);
      case "message":
      case "action":
        return showLine(ev);
      case "history":
        if (olderPending && ev.room === olderPending.room && forceHistory === 0) {
          batch = { older: true, left: ev.count, lines: [] };
          if (ev.count === 0) {
            batch = null;
            showOlder([]);
          }
          return;
        }
        batch = { room: ev.room, left: ev.count, shown: 0, force: forceHistory > 0 };
        if (forceHistory > 0) forceHistory -= 1;
        if (ev.count === 0) batch = null;
        return;
      case "private": {
        const li = el("li", "private");
        if (ev.from !== me.addr) li.classList.add("mention");
        li.append(
          el("span", "time", time(ev.ts)),
          "(private) ",
          nickNode(ev.nick, ev.from),
          " → ",
          nickNode(ev.to_nick, ev.to),
          ": ",
          ev.text,
        );
        return append(li, ev.ts);
      }
      case "entered": {
        const known = epochs.get(ev.room);
        if (known !== undefined && known !== ev.epoch) {
          lastSeq.delete(ev.room);
          noOlder.delete(ev.room);
        }
        epochs.set(ev.room, ev.epoch);
        return;
      }
      case "joined":
        if (ev.addr === me.addr) {
          setRoom(ev.room);
          people.clear();
          renderPeople();
          quietly("/who");
          quietly("/rooms");
        } else if (ev.room === room) {
          people.set(ev.addr, ev.nick);
          renderPeople();
        }
        return notice(`${who(ev.nick, ev.addr)} joined ${ev.room}`);
      case "left":
        if (ev.room === room) {
          people.delete(ev.addr);
          renderPeople();
        }
        return notice(`${who(ev.nick, ev.addr)} left ${ev.room}${ev.reason ? ` (${ev.reason})` : ""}`);
      case "nick":
        if (ev.addr === me.addr) {
          me.nick = ev.new;
          nickInput.value = ev.new;
          storeNick(ev.new);
        }
        if (people.has(ev.addr)) {
          people.set(ev.addr, ev.new);
          renderPeople();
        }
        return notice(`${ev.old || ev.addr} is now known as ${ev.new}`);
      case "who":
        if (ev.room === room) {
          people.clear();
          for (const m of ev.members) people.set(m.addr, m.nick);
          renderPeople();
        }
        if (quiet.who > 0) {
          quiet.who -= 1;
          return;
        }
        return notice(`${ev.members.length} in ${ev.room}: ${ev.members.map((m) => who(m.nick, m.addr)).join(", ")}`);
      case "rooms":
        renderRooms(ev.rooms);
        if (quiet.rooms > 0) {
          quiet.rooms -= 1;
          return;
        }
        return notice(`rooms: ${ev.rooms.map((r) => `${r.name} (${r.members})`).join(", ")}`);
      case "resumed":
        if (ev.restarted) {
          return notice(`the server restarted since you were last here: what was said in ${ev.room} meanwhile is lost`);
        }
        if (ev.replayed === 0 && ev.lost === 0 && !ev.interrupted) return;
        return notice(
          `caught up on ${ev.room}: ${ev.replayed} missed messages` +
            (ev.lost > 0 ? `; ${ev.lost} older ones could not be recovered` : "") +
            (ev.interrupted ? "; the server stopped unexpectedly meanwhile, and lines sent just before that may be missing" : ""),
        );
      case "skipped":
        return notice(`${ev.count} messages skipped (this page was too slow)`);
      case "info":
        // The answer to "Earlier messages" when there are none.
        if (olderPending && ev.text.startsWith("no messages before")) return showOlder([]);
        return notice(ev.text, "info");
      case "error":
        return notice(ev.message, "error");
      default:
        // A newer server's event this page does not know: nothing to show.
        return;
    }
  }

  function onWelcome(ev) {
    const first = !welcomed;
    welcomed = true;
    const resumeFrom = { epoch: epochs.get(room), room, seq: lastSeq.get(room) || 0 };
    const known = epochs.get(ev.room);
    if (known !== undefined && known !== ev.epoch) {
      lastSeq.delete(ev.room);
      noOlder.delete(ev.room);
    }
    epochs.set(ev.room, ev.epoch);
    olderPending = null;
    // A server that hands out reclaim tokens took the nickname and room
    // from the URL (or gave the place back); an older one needs commands.
    const tookHello = typeof ev.reclaim === "string";
    reclaim = tookHello ? ev.reclaim : null;
    me = { addr: ev.addr, nick: ev.nick || null };
    if (me.nick) {
      nickInput.value = me.nick;
      storeNick(me.nick);
    }
    attempt = 0;
    setState("connected", "connected");
    setRoom(ev.room);
    people.clear();
    notice(
      first
        ? `welcome to ${ev.server}! you are ${ev.addr} in ${ev.room}; ${ev.online} online; /help lists commands`
        : `reconnected as ${ev.addr}; ${ev.online} online`,
    );
    if (!tookHello) {
      const nick = storedNick();
      if (nick) send(`/nick ${nick}`);
      if (!first && resumeFrom.room !== ev.room) send(`/join ${resumeFrom.room}`);
    }
    const inRoom = !tookHello || resumeFrom.room === ev.room;
    if (!first && inRoom && resumeFrom.seq > 0 && resumeFrom.epoch !== undefined) {
      send(`/resume ${resumeFrom.epoch} ${resumeFrom.seq}`);
    }
    if (first || resumeFrom.room === ev.room) {
      quietly("/who");
      quietly("/rooms");
    }
    clearInterval(roomsTimer);
    roomsTimer = setInterval(() => quietly("/rooms"), ROOMS_REFRESH_MS);
  }

  function connect() {
    clearTimeout(retryTimer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    setState(welcomed ? "reconnecting" : "connecting", welcomed ? "reconnecting…" : "connecting…");
    let socket;
    try {
      // A server started with --token: open the page as /?token=SECRET
      // (a browser cannot set the Authorization header on a WebSocket).
      const params = new URLSearchParams();
      const token = new URLSearchParams(location.search).get("token");
      if (token) params.set("token", token);
      // Who and where to start: announced once, in that room; with the
      // token, the held place itself.
      if (reclaim) params.set("reclaim", reclaim);
      const nick = me.nick || storedNick();
      if (nick) params.set("nick", nick);
      if (room !== DEFAULT_ROOM) params.set("room", room);
      const query = params.toString() ? `?${params}` : "";
      socket = new WebSocket(`${scheme}//${location.host}/ws${query}`, SUBPROTOCOL);
    } catch (e) {
      notice(`cannot open a connection to ${location.host}: ${e.message}`, "error");
      return retry();
    }
    ws = socket;
    quiet.who = 0;
    quiet.rooms = 0;
    batch = null;
    socket.addEventListener("message", (m) => {
      if (typeof m.data !== "string") return;
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch {
        return;
      }
      onEvent(ev);
    });
    socket.addEventListener("close", (c) => {
      if (ws !== socket) return;
      ws = null;
      clearInterval(roomsTimer);
      const wasConnected = connected;
      const why = c.reason ? `: ${c.reason}` : "";
      if (c.code === 1008 || (c.code >= 4000 && c.code <= 4999)) {
        stopped = true;
      }
      if (stopped) {
        setState("disconnected", "disconnected");
        notice(`disconnected${why}. Reload the page to connect again.`, "error");
        return;
      }
      if (wasConnected) notice(`connection lost${why}; reconnecting…`, "error");
      retry();
    });
  }

  function retry() {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    const delay = Math.random() * ceiling;
    attempt = Math.min(attempt + 1, 16);
    setState("reconnecting", `disconnected; retrying in ${Math.ceil(delay / 1000)} s`);
    retryTimer = setTimeout(connect, delay);
  }

  sendForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const line = input.value;
    if (line.trim() === "" || !connected) return;
    const command = line.trim().split(/\s+/)[0].toLowerCase();
    if (command === "/history") forceHistory += 1;
    if (command === "/quit") stopped = true;
    if (send(line)) {
      sent.push(line);
      if (sent.length > 100) sent.shift();
      recall = -1;
      input.value = "";
    }
  });

  input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowUp" && sent.length > 0 && (input.value === "" || recall >= 0)) {
      e.preventDefault();
      recall = recall < 0 ? sent.length - 1 : Math.max(0, recall - 1);
      input.value = sent[recall];
    } else if (e.key === "ArrowDown" && recall >= 0) {
      e.preventDefault();
      recall += 1;
      input.value = recall < sent.length ? sent[recall] : "";
      if (recall >= sent.length) recall = -1;
    }
  });

  nickForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const nick = nickInput.value.trim();
    if (nick === "" || nick === me.nick) return;
    if (!send(`/nick ${nick}`)) notice("not connected: the nickname is set once the chat is back", "error");
  });

  joinForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = joinInput.value.trim();
    if (name === "") return;
    if (send(`/join ${name}`)) joinInput.value = "";
  });

  olderButton.addEventListener("click", askOlder);

  sideToggle.addEventListener("click", () => {
    const open = side.classList.toggle("open");
    sideToggle.setAttribute("aria-expanded", open ? "true" : "false");
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      unread = 0;
      document.title = "chat";
    }
  });

  const saved = storedNick();
  if (saved) nickInput.value = saved;
  input.focus();
  connect();
})();
