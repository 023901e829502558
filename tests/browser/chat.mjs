// Drives the embedded chat page in Debian's Chromium (playwright-core,
// never a downloaded browser) against the real `sluice` binary on the
// built-in demo model: create a chat, stream an answer, drop the socket
// mid-answer and check the page resumes with every token exactly once,
// reload and find the history; then, against the fake provider scripted to
// call tools, watch the agent's tool steps appear as they run and come back
// with the history. Prints `N passed, N failed`.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = resolve(import.meta.dirname, "../..");
const target = process.env.CARGO_TARGET_DIR || join(root, "target");
const dataDirs = [];
const children = [];

// Starts `sluice` with `env` on a free port; resolves to its base URL.
async function startSluice(env) {
  const dataDir = mkdtempSync(join(tmpdir(), "sluice-browser-"));
  dataDirs.push(dataDir);
  const child = spawn(join(target, "debug", "sluice"), [], {
    env: { PATH: process.env.PATH, SLUICE_ADDR: "127.0.0.1:0", SLUICE_DATA_DIR: dataDir, SLUICE_LOG_FORMAT: "json", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  const addr = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("sluice did not start")), 30000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      try {
        const record = JSON.parse(line);
        if (record.message === "listening") { clearTimeout(timer); ok(record.addr); }
      } catch { /* not a log record */ }
    });
  });
  return `http://${addr}`;
}

// The fake OpenAI-compatible provider (tests/support), scripted by model.
async function startFake() {
  const child = spawn(join(target, "debug", "fake-upstream"), [], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  return await new Promise((ok) => createInterface({ input: child.stdout }).once("line", ok));
}

const base = await startSluice({ SLUICE_DEMO_TOKEN_DELAY_MS: "15" });

let passed = 0, failed = 0;
async function check(name, fn) {
  try { await fn(); passed++; console.log(`ok     ${name}`); }
  catch (e) { failed++; console.log(`FAILED ${name}\n${e.stack}`); }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
// The page runs under a strict Content-Security-Policy: anything it blocks
// (an inline handler, a style attribute, a foreign connection) fails.
const blocked = [];
page.on("console", (m) => { if (/Content.Security.Policy/i.test(m.text())) blocked.push(m.text()); });
const answers = page.locator(".msg.assistant");
const finished = (i) => page.waitForFunction(
  (i) => /\d+ tokens/.test(document.querySelectorAll(".msg.assistant .meta")[i]?.textContent ?? ""),
  i, { timeout: 30000 });

try {
  await page.goto(base + "/");
  await check("a new chat streams an answer from the demo model", async () => {
    await page.click("#new");
    await page.waitForSelector("#input:not([disabled])");
    await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Connected"));
    await page.fill("#input", "hello from the browser");
    await page.press("#input", "Enter");
    await finished(0);
    const text = await answers.nth(0).locator("div").first().textContent();
    assert(text.startsWith("[Sluice demo model]"), text);
    assert(text.includes('You said: "hello from the browser"'), text);
  });

  await check("a dropped socket resumes mid-answer without losing or repeating a token", async () => {
    await page.fill("#input", "second question");
    await page.press("#input", "Enter");
    await page.waitForFunction(() => (document.querySelectorAll(".msg.assistant")[1]?.firstChild.textContent.length ?? 0) > 20);
    await page.evaluate(() => state.ws.close());
    await finished(1);
    const shown = await answers.nth(1).locator("div").first().textContent();
    const sessionId = await page.evaluate(() => state.sessionId);
    const stored = await (await fetch(`${base}/v1/sessions/${sessionId}`)).json();
    assert(stored.messages[3].status === "complete", stored.messages[3].status);
    assert(shown === stored.messages[3].content, `shown:\n${shown}\nstored:\n${stored.messages[3].content}`);
  });

  await check("the chat is listed with its title and its history reloads", async () => {
    await page.reload();
    await page.click("#sessions li >> text=hello from the browser");
    await page.waitForFunction(() => document.querySelectorAll(".msg").length === 4);
  });

  await check("files attach with progress, a thumbnail and their indexing status, and the answer names its sources", async () => {
    // A 1x1 PNG and a text document.
    const png = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==", "base64");
    await page.setInputFiles("#file", [
      { name: "ferry.md", mimeType: "text/markdown", buffer: Buffer.from("# Ferry\n\nThe night ferry to Tallinn leaves from terminal D at 23:15.\n") },
      { name: "dot.png", mimeType: "image/png", buffer: png },
    ]);
    await page.waitForFunction(() => [...document.querySelectorAll("#attachments .file .state")].map((s) => s.textContent).join() === "indexed,indexed", null, { timeout: 30000 });
    assert(await page.locator("#attachments .file img").count() === 1, "no thumbnail");
    assert(await page.locator("#attachments progress").count() === 0, "a progress bar was left");
    await page.fill("#input", "When does the night ferry to Tallinn leave?");
    await page.press("#input", "Enter");
    await finished(2);
    const sources = await answers.nth(2).locator(".sources").textContent();
    assert(sources.includes("ferry.md"), sources);
    const user = page.locator(".msg.user").nth(2);
    await page.waitForFunction(() => document.querySelectorAll(".msg.user")[2]?.querySelectorAll(".files .file").length === 2);
    assert(await user.locator(".files img").count() === 1, "no image in the sent message");
    assert(await page.locator("#attachments .file").count() === 0, "attachments were not cleared");
    await page.screenshot({ path: join(target, "browser-chat.png") });
  });

  await check("the agent's tool steps show their name, arguments and result as they arrive, and after a reload", async () => {
    const agent = await startSluice({
      SLUICE_LLM_BASE_URL: await startFake(),
      SLUICE_LLM_MODEL: "fake:tools,preamble=1,tokens=3,delay_ms=20",
    });
    await page.goto(agent + "/");
    await page.click("#new");
    await page.waitForSelector("#input:not([disabled])");
    await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Connected"));
    const script = { steps: [[
      { name: "calculator", arguments: { expression: "6*7" } },
      { name: "current_time", arguments: { timezone: "Asia/Tokyo" } },
    ]] };
    await page.fill("#input", JSON.stringify(script));
    await page.press("#input", "Enter");
    await finished(0);
    const steps = answers.nth(0).locator(".tool");
    assert(await steps.count() === 2, "two tool steps");
    const first = (await steps.nth(0).textContent());
    assert(first.includes("calculator") && first.includes("6*7") && first.includes("42") && first.includes("✓"), first);
    assert((await steps.nth(1).textContent()).includes("Asia/Tokyo"), "the time step");
    const text = await answers.nth(0).locator("div").first().textContent();
    assert(text === "(step 0) <0><1><2>", text);
    await page.screenshot({ path: join(target, "browser-agent.png") });
    await page.reload();
    await page.click("#sessions li");
    await page.waitForFunction(() => document.querySelectorAll(".msg.assistant .tool").length === 2);
    const again = await page.locator(".msg.assistant .tool").nth(0).textContent();
    assert(again.includes("42"), again);
  });
  await check("the page's security policy blocked nothing", async () => {
    assert(blocked.length === 0, blocked.join("\n"));
  });
} finally {
  await browser.close();
  for (const child of children) child.kill("SIGKILL");
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
