// The page: what the server serves (`/api/info`), the tabs, the theme, `?autostart=`.

import { Assistant } from "./assistant.js";
import { Chat } from "./chat.js";
import { Dictation } from "./dictation.js";
import { Speech } from "./tts.js";
import { $, notify, pageParam, serverFetch, showModel } from "./ui.js";

const LOCAL = ["localhost", "127.0.0.1", "[::1]"];

function setupTheme() {
  const saved = localStorage.getItem("theme");
  if (saved) document.documentElement.dataset.theme = saved;
  $("theme").onclick = () => {
    const dark = matchMedia("(prefers-color-scheme: dark)").matches;
    const now = document.documentElement.dataset.theme || (dark ? "dark" : "light");
    const next = now === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("theme", next);
  };
}

function showPanel(name) {
  for (const tab of document.querySelectorAll(".tabs [role=tab]")) {
    const selected = tab.dataset.panel === name;
    tab.setAttribute("aria-selected", String(selected));
    $(`panel-${tab.dataset.panel}`).hidden = !selected;
  }
  history.replaceState(null, "", `${location.search}#${name}`);
}

function warnIfInsecure() {
  if (window.isSecureContext || LOCAL.includes(location.hostname)) return;
  notify(
    "insecure",
    `Browsers allow the microphone only on https or on localhost, and this page came over plain ` +
      `http from ${location.host}. Restart the server with --ssl DIR (cert.pem and key.pem) and ` +
      `open https://${location.host}/ instead. Text to speech works as it is.`,
    "warn",
  );
}

async function main() {
  setupTheme();
  warnIfInsecure();
  let info;
  try {
    const response = await serverFetch("api/info");
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    info = await response.json();
  } catch (error) {
    $("loading").textContent = "The server could not be reached.";
    notify("info", `Could not ask the server what it serves: ${error.message}`, "error", {
      label: "Retry",
      run: () => location.reload(),
    });
    return;
  }
  $("loading").hidden = true;
  const page = {};
  const names = [];
  if (info.chat) {
    page.chat = new Chat(info.chat);
    showModel($("model-name"), info.chat.model, info.chat.checkpoint);
    names.push("chat");
  }
  if (info.stt) {
    page.dictation = new Dictation(info.stt);
    names.push("dictation");
  }
  if (info.tts) {
    page.tts = new Speech(info.tts);
    names.push("tts");
  }
  if (info.assistant) {
    page.assistant = new Assistant(info.assistant);
    names.push("assistant");
  }
  window.moshiPage = page; // (for kiosks and tests: each mode's `stats`)
  if (!names.length) {
    $("loading").hidden = false;
    $("loading").textContent = "This server serves no models.";
    return;
  }
  for (const name of names) {
    const tab = $(`tab-${name}`);
    tab.hidden = false;
    tab.onclick = () => showPanel(name);
  }
  document.querySelector(".tabs").hidden = names.length < 2;
  const autostart = pageParam("autostart");
  const hash = location.hash.slice(1);
  const first = names.includes(autostart) ? autostart : names.includes(hash) ? hash : names[0];
  showPanel(first);
  if (autostart && page[autostart]) page[autostart].start();
  else if (autostart) notify("autostart", `autostart=${autostart}: not served here.`, "warn");
}

main();
