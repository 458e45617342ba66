// dlvm dashboard: panels fed by the API (Prefect runs, Label Studio progress), the
// rollback button and the token prompt. The token lives in sessionStorage and in the
// dlvm_token cookie (so that pages and images load when reads need a token).
"use strict";

function token() { return sessionStorage.getItem("dlvm_token") || ""; }

function remember(value) {
  sessionStorage.setItem("dlvm_token", value);
  document.cookie = "dlvm_token=" + encodeURIComponent(value) + "; path=/; SameSite=Strict";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

async function getJSON(url) {
  const headers = token() ? { Authorization: "Bearer " + token() } : {};
  const response = await fetch(url, { headers });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

async function loadFlowRuns(section) {
  const placeholder = section.querySelector(".loading");
  try {
    const data = await getJSON(section.dataset.src);
    if (data.error) { placeholder.textContent = data.error; placeholder.className = "alert error"; return; }
    const rows = data.runs.map(r => el("tr", { class: "state-" + r.state.toLowerCase() },
      el("td", {}, r.start_time.replace("T", " ")), el("td", {}, r.flow),
      el("td", {}, r.url ? el("a", { href: r.url, target: "_blank", rel: "noopener" }, r.name) : r.name),
      el("td", {}, el("span", { class: "state" }, r.state))));
    const table = el("table", { class: "flow-runs" },
      el("thead", {}, el("tr", {}, el("th", {}, "started"), el("th", {}, "flow"), el("th", {}, "run"), el("th", {}, "state"))),
      el("tbody", {}, ...rows));
    const note = data.prefect_ui ? el("p", {}, "Open the ", el("a", { href: data.prefect_ui, target: "_blank" }, "Prefect UI"))
                                 : el("p", { class: "muted" }, "Embedded Prefect API: no Prefect UI to link to (set PREFECT_API_URL to a Prefect server).");
    placeholder.replaceWith(rows.length ? table : el("p", {}, "No flow runs yet."), note);
  } catch (error) {
    placeholder.textContent = "flow runs: " + error.message;
  }
}

async function loadLabeling(box) {
  const placeholder = box.querySelector(".loading");
  try {
    const data = await getJSON(box.dataset.src);
    let text;
    if (!data.configured) text = "labeling progress: Label Studio is not configured (DLVM_LABEL_STUDIO_URL).";
    else if (data.error) text = "labeling progress: " + data.error;
    else if (!data.project) text = "labeling progress: no Label Studio project for this dataset yet.";
    else {
      const p = data.project;
      const pct = p.n_tasks ? Math.round(100 * p.n_labeled / p.n_tasks) : 0;
      placeholder.replaceWith(el("p", { class: "labeling-progress" }, "labeling: ", el("strong", {}, `${p.n_labeled} of ${p.n_tasks} tasks labeled (${pct} %)`),
        `, ${p.n_annotations} annotations, ${p.n_skipped} skipped, ${p.n_predictions} pre-annotations — `,
        el("a", { href: p.url, target: "_blank" }, p.title)), el("progress", { max: p.n_tasks || 1, value: p.n_labeled }));
      return;
    }
    placeholder.textContent = text;
  } catch (error) {
    placeholder.textContent = "labeling progress: " + error.message;
  }
}

async function rollBack(event) {
  event.preventDefault();
  const form = event.target;
  const result = document.getElementById("rollback-result");
  const given = form.token.value || token();
  if (!given) { result.textContent = "Enter the API token (DLVM_API_TOKEN) to roll back."; result.className = "alert error"; return; }
  const alias = form.alias.value;
  if (!confirm(`Roll ${form.dataset.model} ${alias} back to its previous version?`)) return;
  const response = await fetch(`/api/models/${encodeURIComponent(form.dataset.model)}/rollback`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: "Bearer " + given },
    body: JSON.stringify({ alias, reason: form.reason.value || "rolled back from the dashboard", actor: "dashboard" }),
  });
  const body = await response.json();
  if (!response.ok) { result.textContent = `Refused (HTTP ${response.status}): ${body.detail}`; result.className = "alert error"; return; }
  remember(given);
  result.textContent = `Rolled back: ${alias} is v${body.version} (event #${body.event_id}).`;
  result.className = "alert ok";
  setTimeout(() => location.reload(), 800);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("#flow-runs[data-src]").forEach(loadFlowRuns);
  document.querySelectorAll(".labeling[data-src]").forEach(loadLabeling);
  const form = document.getElementById("rollback-form");
  if (form) form.addEventListener("submit", rollBack);
  const login = document.getElementById("login-form");
  if (login) login.addEventListener("submit", e => { e.preventDefault(); remember(login.token.value); location.reload(); });
});
