// A headless Chromium the Rust integration tests drive, one command at a
// time: each line on stdin is a JSON command, each line on stdout its JSON
// answer, `{"ok": true, "value": ...}` or `{"ok": false, "error": "..."}`.
// The tests keep the scenario (start and kill gateways, check what reached
// the app); this only does what a person at the page would.
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM), driven by
// playwright-core; Playwright's own browser download is not used.
//
// Commands:
//   {"op": "goto", "url": U}
//   {"op": "wait_text", "selector": S, "text": T, "timeout_ms": N}
//       until an element matching S contains T
//   {"op": "text", "selector": S}         the first match's text
//   {"op": "fill", "selector": S, "value": V}
//   {"op": "click", "selector": S}
//   {"op": "eval", "js": "() => ..."}     a function run in the page
//   {"op": "screenshot", "path": P}
//   {"op": "close"}
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // Root in CI has no user namespace for the sandbox; the flags after it
    // keep Chromium from reaching for Google's hosts, which a closed network
    // refuses. Playwright gives it a fresh, empty profile.
    args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ],
});
const page = await browser.newPage();
// What the page said to its console: reported with a failure, to say why.
const said = [];
page.on("console", (m) => said.push(`${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => said.push(`error: ${e.message}`));
// A person at the page answers "OK" to the page's confirmations.
page.on("dialog", (d) => d.accept());

async function run(command) {
    const timeout = command.timeout_ms ?? 15000;
    switch (command.op) {
        case "goto":
            await page.goto(command.url);
            return null;
        case "wait_text":
            await page
                .locator(command.selector)
                .filter({ hasText: command.text })
                .first()
                .waitFor({ timeout });
            return null;
        case "text":
            return await page.locator(command.selector).first().innerText({ timeout });
        case "fill":
            await page.locator(command.selector).first().fill(command.value, { timeout });
            return null;
        case "click":
            await page.locator(command.selector).first().click({ timeout });
            return null;
        case "eval":
            return await page.evaluate(`(${command.js})()`);
        case "screenshot":
            await page.screenshot({ path: command.path, fullPage: true });
            return null;
        default:
            throw new Error(`unknown command ${JSON.stringify(command.op)}`);
    }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.op === "close") break;
    let answer;
    try {
        answer = { ok: true, value: (await run(command)) ?? null };
    } catch (e) {
        const body = await page.locator("body").innerText().catch(() => "?");
        answer = {
            ok: false,
            error: `${e.message}\n--- the page shows:\n${body.slice(0, 4000)}\n--- its console:\n${said.slice(-20).join("\n")}`,
        };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
}
await browser.close();
// stdin's reader would keep the process alive.
lines.close();
process.stdin.destroy();
