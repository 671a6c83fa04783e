// The desktop assistant: a chat over the server's OpenAI API with a detox toggle, a strength slider and a
// compare button. Each request carries its own `steering` object; each reply shows the setting it ran under.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];  // {role, content} of the conversation, sent with every request
let busy = false;

function steering(enabled) {
  const profile = $("profile").value;
  return {
    enabled: enabled ?? $("detox").checked,
    profiles: profile ? {[profile]: 1.0} : {},
    strength: Number($("strength").value),
    apply: $("apply").value,
  };
}

function describe(setting) {
  if (!setting || !setting.enabled || Object.keys(setting.profiles).length === 0) return "unsteered";
  const mix = Object.entries(setting.profiles).map(([name, w]) => w === 1 ? name : `${name} ×${w}`).join(" + ");
  const scope = setting.apply === "generation" ? ", reply only" : "";
  return `steered: ${mix}, strength ${setting.strength}${scope}`;
}

function bubble(role, text, parent = $("log")) {
  const node = document.createElement("div");
  node.className = `turn ${role === "user" ? "user" : "reply"}`;
  node.append(document.createTextNode(text));
  parent.append(node);
  node.scrollIntoView({block: "end"});
  return node;
}

function label(node, setting) {
  node.dataset.steering = JSON.stringify(setting || {});
  node.classList.toggle("steered", describe(setting) !== "unsteered");
  const tag = document.createElement("span");
  tag.className = "setting";
  tag.textContent = describe(setting);
  node.append(tag);
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function post(body) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new Error(problem.error?.message || `HTTP ${response.status}`);
  }
  return response;
}

// Streams one reply into `node`; returns {text, setting}.
async function stream(messages, node) {
  const response = await post({messages, stream: true, max_tokens: 160, temperature: 0, steering: steering()});
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const text = document.createTextNode("");
  node.append(text);
  let buffer = "", setting = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      setting = chunk.steering;
      text.data += chunk.choices[0].delta?.content || "";
      node.scrollIntoView({block: "end"});
    }
  }
  return {text: text.data.trim(), setting};
}

async function send(event) {
  event.preventDefault();
  const content = $("message").value.trim();
  if (!content || busy) return;
  busy = true;
  $("message").value = "";
  history.push({role: "user", content});
  bubble("user", content);
  const node = bubble("assistant", "");
  status("replying…");
  try {
    const {text, setting} = await stream(history, node);
    label(node, setting);
    history.push({role: "assistant", content: text});
    status("");
  } catch (error) {
    node.remove();
    history.pop();
    status(error.message, true);
  } finally {
    busy = false;
  }
}

async function compare() {
  const last = [...history].reverse().find((m) => m.role === "user");
  if (!last || busy) return status("Send a message first.", !last);
  busy = true;
  status("comparing…");
  const upto = history.slice(0, history.lastIndexOf(last) + 1);
  const row = document.createElement("div");
  row.className = "compare";
  $("log").append(row);
  try {
    // Both at once: the server decodes them in one batch, each row under its own setting.
    const results = await Promise.all([false, true].map(async (enabled) => {
      const response = await post({messages: upto, max_tokens: 160, temperature: 0, steering: steering(enabled)});
      return response.json();
    }));
    for (const result of results) {
      const node = bubble("assistant", result.choices[0].message.content.trim(), row);
      label(node, result.steering);
    }
    status("");
  } catch (error) {
    status(error.message, true);
  } finally {
    busy = false;
  }
}

async function start() {
  const listing = await (await fetch("/v1/steering")).json();
  const models = await (await fetch("/v1/models")).json();
  $("model").textContent = models.data[0]?.id || "";
  const chosen = Object.keys(listing.default.profiles)[0] || "";
  const none = new Option("(none)", "");
  $("profile").append(none);
  for (const profile of listing.data) {
    $("profile").append(new Option(`${profile.name} (${profile.source}, k ${profile.k})`, profile.name));
  }
  $("profile").value = chosen;
  $("strength").value = listing.default.strength;
  $("strength-value").textContent = listing.default.strength;
  $("apply").value = listing.default.apply;
  $("detox").checked = listing.default.enabled;
  status(listing.data.length ? "" : "This model has no steering profile: load one with serve --profile FILE.");
}

$("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
$("composer").addEventListener("submit", send);
$("compare").addEventListener("click", compare);
$("clear").addEventListener("click", () => { history.length = 0; $("log").replaceChildren(); });
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) send(event);
});
start().catch((error) => status(`cannot reach the server: ${error.message}`, true));
