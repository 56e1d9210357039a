// The desk's progressive enhancement: a live progress bar on a digest's page, and a progress
// indicator while a CSV uploads. Everything works without it (reload the page).
"use strict";

function watchProgress(section) {
  const bar = document.getElementById("bar");
  const figures = document.getElementById("figures");
  const statusCell = document.getElementById("status");
  const initial = statusCell.dataset.status;
  const number = new Intl.NumberFormat(document.documentElement.lang);
  const d = section.dataset;

  async function tick() {
    let data;
    try {
      const response = await fetch(d.url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) return;
      data = await response.json();
    } catch (error) {
      return;
    }
    if (data.status !== initial) {
      // Other buttons apply now (resume instead of pause): show the page as it stands.
      window.location.reload();
      return;
    }
    bar.value = data.progress;
    bar.textContent = Math.round(data.progress * 100) + " %";
    let text = d.sentLabel + " " + number.format(data.sent) + " · " + d.failedLabel + " " + number.format(data.failed);
    if (data.rate_per_second) text += " · " + d.rateLabel + " " + number.format(Math.round(data.rate_per_second * 10) / 10) + " / s";
    if (data.eta_seconds) text += " · " + d.etaLabel + " " + number.format(Math.round(data.eta_seconds)) + " s";
    figures.textContent = text;
    window.setTimeout(tick, 1000);
  }
  if (initial === "sending" || initial === "paused") window.setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) watchProgress(live);
  const importForm = document.getElementById("import-form");
  if (importForm) {
    importForm.addEventListener("submit", () => {
      document.getElementById("import-progress").hidden = false;
    });
  }
});
