// Small page helpers: elements, messages to the user, server addresses.

export const $ = (id) => document.getElementById(id);

const params = new URLSearchParams(location.search);

// The page's query parameters (`autostart`, `auth_id`).
export const pageParam = (name) => params.get(name);

// A WebSocket URL for `path` on this server, with `query` (and the page's `auth_id`, if any).
export function socketUrl(path, query = {}) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const auth = pageParam("auth_id");
  if (auth) url.searchParams.set("auth_id", auth);
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url.href;
}

// `fetch` on this server, with the page's `auth_id` as Kyutai's `kyutai-api-key` header.
export function serverFetch(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const auth = pageParam("auth_id");
  if (auth) headers.set("kyutai-api-key", auth);
  return fetch(new URL(path, location.href), { ...options, headers });
}

// Shows a message at the top of the page; a message with the same `key` replaces the last one.
// `level`: "error", "warn" or "info". Returns a function that removes it.
export function notify(key, text, level = "error", action = null) {
  const host = $("banners");
  const old = host.querySelector(`[data-key="${key}"]`);
  if (old) old.remove();
  const banner = document.createElement("div");
  banner.className = `banner ${level}`;
  banner.dataset.key = key;
  banner.setAttribute("role", level === "error" ? "alert" : "status");
  const message = document.createElement("span");
  message.textContent = text.charAt(0).toUpperCase() + text.slice(1);
  banner.append(message);
  if (action) {
    const button = document.createElement("button");
    button.className = "ghost small";
    button.textContent = action.label;
    button.onclick = () => {
      banner.remove();
      action.run();
    };
    banner.append(button);
  }
  const close = document.createElement("button");
  close.className = "close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.onclick = () => banner.remove();
  banner.append(close);
  host.append(banner);
  return () => banner.remove();
}

export const dismiss = (key) => {
  const old = $("banners").querySelector(`[data-key="${key}"]`);
  if (old) old.remove();
};

// When the browser keeps audio suspended until a gesture: one tap on the page resumes it.
export function askForTap(resumed) {
  const remove = notify("tap", "Tap anywhere on the page to turn the sound on.", "info");
  const resume = () => {
    document.removeEventListener("pointerdown", resume);
    resumed.finally(remove);
  };
  document.addEventListener("pointerdown", resume);
}

// A model's badge: the short name the server gives it, its full source (a folder, a hub repo)
// in the tooltip.
export function showModel(badge, name, source) {
  badge.textContent = name || "";
  badge.title = source && source !== name ? source : "";
}

// Why a WebSocket closed, for the user.
export function closeReason(event) {
  if (event.code === 1008 || event.code === 4001) return "The server refused the key (--api-key).";
  if (event.reason) return event.reason;
  return `The connection to the server was lost (code ${event.code}).`;
}
