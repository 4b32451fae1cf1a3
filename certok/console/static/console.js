// certok console: small enhancements; every action also works without JavaScript.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button) return;
  var source = document.getElementById(button.dataset.copy);
  if (!source || !navigator.clipboard) return;
  var label = button.textContent;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "✓";
    setTimeout(function () { button.textContent = label; }, 1500);
  });
});
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  if (!form.classList.contains("js-check") || !window.fetch) return;
  // "Check now" in place: the same POST, answered as JSON, the row updated.
  event.preventDefault();
  var row = form.closest("tr");
  var button = form.querySelector("button");
  button.disabled = true;
  fetch(form.action, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Accept": "application/json",
               "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(new FormData(form)).toString()
  }).then(function (response) {
    if (!response.ok) throw new Error(String(response.status));
    return response.json();
  }).then(function (result) {
    var status = row.querySelector("td.status");
    status.textContent = "";
    var badge = document.createElement("span");
    badge.className = "badge " + (result.valid ? "ok" : "bad");
    badge.textContent = result.label;
    status.appendChild(badge);
    if (result.detail) {
      var detail = document.createElement("div");
      detail.className = "reason";
      detail.textContent = result.detail;
      status.appendChild(detail);
    }
    row.querySelector("td.checked").textContent = result.checked;
    row.dataset.checks = String(Number(row.dataset.checks || "0") + 1);
  }).catch(function () { form.submit(); }).finally(function () { button.disabled = false; });
});
