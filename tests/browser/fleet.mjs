// Drives the fleet view's dashboard (`fhir-edge fleet`) in Debian's headless Chromium.
//
// Usage: node fleet.mjs <base-url> <screenshot.png>
//
// Expects a fleet view of at least two sites that each have a case. Checks: the case queue
// shows the Site column with both sites; a click opens a case of either site with its
// narrative and timeline, and offers no decision (the view is read-only); no request
// fails or leaves the view. Prints one JSON line {"sites": [...], "opened": "<site>:<id>"}.
import { chromium } from "playwright-core";

const [base, shot] = process.argv.slice(2);
if (!base || !shot) {
  console.error("usage: node fleet.mjs <base-url> <screenshot.png>");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions",
  ],
});
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  page.on("response", r => { if (r.status() >= 400) errors.push(`HTTP ${r.status()} for ${r.url()}`); });
  page.on("request", r => { if (!r.url().startsWith(base) && !r.url().startsWith("data:")) errors.push("left the view: " + r.url()); });
  await page.goto(base + "/", { waitUntil: "load" });
  // Every status, so both sites' cases show whatever their state.
  await page.waitForSelector("tr.case", { timeout: 15000 });
  await page.selectOption("#fc-status", "");
  await page.waitForFunction(() => {
    const sites = new Set([...document.querySelectorAll("tr.case td.site-col")].map(td => td.textContent));
    return sites.size >= 2;
  }, null, { timeout: 15000 });
  if (!(await page.locator("th.site-col").first().isVisible())) throw new Error("no Site column in the fleet view");
  const sites = [...new Set(await page.locator("tr.case td.site-col").allTextContents())].sort();
  const last = page.locator("tr.case").last();
  const key = await last.getAttribute("data-id");
  if (!/^[A-Za-z0-9_-]+:\d+$/.test(key)) throw new Error(`a case row's key is ${JSON.stringify(key)}, not <site>:<id>`);
  await last.click();
  await page.waitForSelector("#d-narrative", { timeout: 10000 });
  const story = await page.textContent("#d-narrative");
  if (!story.trim()) throw new Error("the case has no narrative");
  if ((await page.locator("ol.timeline li").count()) < 1) throw new Error("the case has no timeline");
  if ((await page.locator("#detail button[data-cs]").count()) > 0) throw new Error("the read-only view offers decisions");
  await page.screenshot({ path: shot });
  if (errors.length) throw new Error("errors in the page: " + errors.join("; "));
  console.log(JSON.stringify({ sites, opened: key }));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error("fleet browser test failed: " + (failed.stack || failed));
  process.exit(1);
}
