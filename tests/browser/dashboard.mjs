// Drives the fhir-edge dashboard in Debian's headless Chromium, as a privacy officer would.
//
// Usage: node dashboard.mjs <base-url> <new-event.json> <screenshot.png>
//
// Expects a running daemon at <base-url> that already holds at least two alerts. Checks:
//  1. the page lists them, with non-zero severity counts and a drawn score chart;
//  2. a click on an alert opens its explanation; "False positive" marks it, and the page
//     shows the new status;
//  3. an event pushed to /fhir/notify while the page is open appears in the list without a
//     reload (the list is live);
//  4. the case queue lists the cases; a click opens one with its narrative, the user card
//     and the timeline;
//     "Close: appropriate" with a note closes it, adds the allow-list rules it implies, and
//     the page shows both; the case leaves the queue and is listed under "closed".
// Prints one JSON line {"false_positive_id": N, "live_event_id": "...", "closed_case_id": N}
// for the caller to check against the API. Exits non-zero with a message on any failure.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const [base, newEventPath, shot] = process.argv.slice(2);
if (!base || !newEventPath || !shot) {
  console.error("usage: node dashboard.mjs <base-url> <new-event.json> <screenshot.png>");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // The machine's network is closed: keep Chromium from reaching out at all.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions",
  ],
});
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const consoleErrors = [];
  page.on("console", m => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", e => consoleErrors.push(String(e)));
  page.on("response", r => { if (r.status() >= 400) consoleErrors.push(`HTTP ${r.status()} for ${r.url()}`); });
  // Any request that leaves the daemon (a CDN, fonts) would fail offline: forbid it.
  const foreign = [];
  page.on("request", r => { if (!r.url().startsWith(base) && !r.url().startsWith("data:")) foreign.push(r.url()); });

  await page.goto(base + "/", { waitUntil: "load" });

  // 1. Alerts listed, counts shown, health badge up.
  await page.waitForSelector("tr.alert", { timeout: 15000 });
  const rows = await page.locator("tr.alert").count();
  if (rows < 2) throw new Error(`expected at least 2 alert rows, found ${rows}`);
  const counts = await page.evaluate(() =>
    ["critical", "high", "medium", "low"].reduce((s, k) => s + Number(document.getElementById("c-" + k).textContent), 0));
  if (counts < rows) throw new Error(`severity counts add up to ${counts}, fewer than the ${rows} rows`);
  const health = await page.textContent("#health");
  if (health !== "ok") throw new Error(`health badge says ${JSON.stringify(health)}`);
  // A site model: no learning note (the daemon here does not learn).
  if (await page.locator("#learning").isVisible()) throw new Error("the learning note shows for a site model");
  const inked = await page.evaluate(() => {
    const c = document.getElementById("score-chart");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  });
  if (inked < 20) throw new Error(`score chart looks empty (${inked} pixels drawn)`);

  // 2. Open the first alert, read why, mark it a false positive.
  const first = page.locator("tr.alert").first();
  const id = Number(await first.getAttribute("data-id"));
  await first.click();
  await page.waitForSelector("#detail ul li", { timeout: 10000 });
  const why = await page.locator("#detail ul li").allTextContents();
  if (!why.length || !why[0].trim()) throw new Error("alert detail has no explanation");
  await page.click('#detail button[data-st="false_positive"]');
  await page.waitForFunction(() => /false positive/.test(document.getElementById("d-status")?.textContent || ""),
    null, { timeout: 10000 });
  await page.waitForFunction(i => {
    const tr = document.querySelector(`tr.alert[data-id="${i}"] td.status`);
    return tr && /false positive/.test(tr.textContent);
  }, id, { timeout: 10000 });

  // 3. Live update: push a new alerting event; it must show up without a reload.
  const ev = JSON.parse(readFileSync(newEventPath, "utf8"));
  const before = await page.locator("tr.alert").count();
  const r = await fetch(base + "/fhir/notify", {
    method: "POST", headers: { "Content-Type": "application/fhir+json" }, body: JSON.stringify(ev),
  });
  if (!r.ok) throw new Error(`/fhir/notify answered ${r.status}`);
  const navigations = [];
  page.on("framenavigated", f => { if (f === page.mainFrame()) navigations.push(f.url()); });
  await page.waitForFunction(n => document.querySelectorAll("tr.alert").length > n, before, { timeout: 20000 });
  if (navigations.length) throw new Error(`page reloaded (${navigations.join(", ")}) instead of updating live`);

  // 4. The case queue: open a case, read its story, close it as appropriate.
  await page.waitForSelector("tr.case", { timeout: 15000 });
  const caseRows = await page.locator("tr.case").count();
  if (caseRows < 2) throw new Error(`expected at least 2 case rows, found ${caseRows}`);
  const firstCase = page.locator("tr.case").first();
  const caseId = Number(await firstCase.getAttribute("data-id"));
  await firstCase.click();
  await page.waitForSelector("#d-narrative", { timeout: 10000 });
  const narrative = await page.textContent("#d-narrative");
  if (!/flagged access/.test(narrative)) throw new Error(`case narrative reads ${JSON.stringify(narrative)}`);
  const steps = await page.locator("#detail ol.timeline li").count();
  if (steps < 1) throw new Error("the case shows no timeline");
  const card = await page.textContent("#d-user");
  if (!/Usual hours/.test(card) || !/Learned from\s*\d+ events/.test(card)) throw new Error(`user card reads ${JSON.stringify(card)}`);
  await page.fill("#case-note", "approved export for the quality registry");
  await page.click('#detail button[data-res="appropriate"]');
  await page.waitForFunction(() => /closed — appropriate/.test(document.getElementById("d-case-status")?.textContent || ""),
    null, { timeout: 10000 });
  await page.waitForFunction(() => /^Added \d+ allow-list rule/.test(document.getElementById("d-implied")?.textContent || ""),
    null, { timeout: 10000 });
  // The queue (the default view) no longer holds it; the closed filter does.
  await page.waitForFunction(i => !document.querySelector(`tr.case[data-id="${i}"]`)
    && /1 closed/.test(document.getElementById("case-counts").textContent), caseId, { timeout: 10000 });
  await page.selectOption("#fc-status", "closed");
  await page.waitForFunction(i => {
    const tr = document.querySelector(`tr.case[data-id="${i}"] td.status`);
    return tr && /closed · appropriate/.test(tr.textContent);
  }, caseId, { timeout: 10000 });

  await page.screenshot({ path: shot, fullPage: true });
  if (consoleErrors.length) throw new Error("console errors: " + consoleErrors.join(" | "));
  if (foreign.length) throw new Error("requests outside the daemon: " + foreign.join(", "));
  console.log(JSON.stringify({ false_positive_id: id, live_event_id: ev.id, rows_before: before, closed_case_id: caseId }));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error("browser test failed: " + (failed.stack || failed));
  process.exit(1);
}
