// The wasmgate console: the fleet, a gateway, a device. Everything it shows
// or changes goes through the API at /api/v1, with the token the person
// gives (kept in this tab's sessionStorage only). Values typed into the page
// are checked against the device's model here first, with the same rules as
// the server (host/src/model.rs), and the server checks them again.
//
// Data from the fleet is put in the page as text nodes, never as HTML.
"use strict";

const API = "/api/v1";
const REFRESH_MS = 2000;
// The largest text or bytes value a model takes (model::MAX_VALUE_BYTES).
const MAX_VALUE_BYTES = 64 * 1024;
// Raw points a chart asks for before it asks for buckets instead.
const RAW_POINT_LIMIT = 5000;
// Buckets a downsampled chart draws across its window.
const BUCKETS = 400;
// The latest alerts a device page lists.
const ALERTS_SHOWN = 20;
const RANGES = [
    ["5 minutes", 300],
    ["1 hour", 3600],
    ["1 day", 86400],
    ["7 days", 604800],
];
const COLOURS = ["#1a56db", "#c2410c", "#047857", "#7c3aed", "#be123c", "#0e7490"];

// The charts on the page, by series: what each one drew, for a person's
// devtools and for the browser tests.
window.wasmgateCharts = {};

// ---- the API -------------------------------------------------------------

class ApiError extends Error {
    constructor(status, message) {
        super(message);
        this.status = status;
    }
}

function token() {
    return sessionStorage.getItem("wasmgate-token");
}

async function api(method, path, body) {
    const headers = {};
    if (token()) headers.Authorization = `Bearer ${token()}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
        response = await fetch(API + path, { method, headers, body });
    } catch (e) {
        throw new ApiError(0, `the server cannot be reached (${e.message})`);
    }
    let json = null;
    try {
        json = await response.json();
    } catch {
        // An answer that is not JSON: its status says enough.
    }
    const why = (json && json.error) || `${response.status} ${response.statusText}`;
    if (response.status === 401) {
        showLogin(token() ? why : "");
        throw new ApiError(401, why);
    }
    if (!response.ok) throw new ApiError(response.status, why);
    return json;
}

const get = (path) => api("GET", path);
const enc = encodeURIComponent;

// ---- building the page ---------------------------------------------------

// An element with attributes and children (strings become text nodes).
function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
        if (value === undefined || value === null || value === false) continue;
        if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
        else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
        if (child === undefined || child === null) continue;
        node.append(child instanceof Node ? child : String(child));
    }
    return node;
}

function fill(node, ...children) {
    node.replaceChildren();
    for (const child of children.flat()) {
        if (child !== undefined && child !== null)
            node.append(child instanceof Node ? child : String(child));
    }
}

// Times from the API are nanoseconds since the epoch; shown in UTC.
function when(ns) {
    if (ns === null || ns === undefined) return "–";
    return new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function shown(value) {
    if (value === undefined) return "–";
    return typeof value === "string" ? value : JSON.stringify(value);
}

function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// A table with its headings; `rows` are its rows, or the `tbody` a view
// refills on each refresh.
function table(headings, rows, attributes = {}) {
    const body = rows instanceof HTMLTableSectionElement ? rows : el("tbody", {}, rows);
    return el("table", attributes, el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))), body);
}

// ---- checking values against the model ------------------------------------

// A value typed for a model's type, as the JSON to send, or why it is refused.
// The same rules as the server's (value::from_json and model::check_value).
function checkValue(text, spec) {
    const kind = spec.type;
    const range = spec.range;
    const outOfRange = (x) =>
        range && !(range[0] <= x && x <= range[1])
            ? `${text.trim()} is out of range [${range[0]}, ${range[1]}]`
            : null;
    switch (kind) {
        case "boolean":
            if (text === "true" || text === "false") return { json: text };
            return { error: `expected boolean (true or false), got ${JSON.stringify(text)}` };
        case "integer": {
            if (!/^\s*-?\d+\s*$/.test(text)) return { error: `expected integer, got ${JSON.stringify(text)}` };
            // BigInt keeps integers past 2^53 exact; it compares with numbers exactly.
            const n = BigInt(text.trim());
            if (n > 9223372036854775807n || n < -9223372036854775808n)
                return { error: `${text.trim()} does not fit in 64 bits` };
            const refused = outOfRange(n);
            return refused ? { error: refused } : { json: n.toString() };
        }
        case "number": {
            const trimmed = text.trim();
            if (!/^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(trimmed))
                return { error: `expected number, got ${JSON.stringify(text)}` };
            const n = Number(trimmed);
            if (!Number.isFinite(n)) return { error: `${trimmed} is not a finite number` };
            const refused = outOfRange(n);
            return refused ? { error: refused } : { json: JSON.stringify(n) };
        }
        case "text": {
            const length = new TextEncoder().encode(text).length;
            if (length > MAX_VALUE_BYTES)
                return { error: `text of ${length} bytes is over the limit of ${MAX_VALUE_BYTES}` };
            return { json: JSON.stringify(text) };
        }
        case "bytes": {
            const compact = text.trim();
            if (compact.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(compact))
                return { error: "expected base64 bytes" };
            if ((compact.length / 4) * 3 > MAX_VALUE_BYTES + 2)
                return { error: `over the limit of ${MAX_VALUE_BYTES} bytes` };
            return { json: JSON.stringify(compact) };
        }
        default:
            return { error: `the model's type ${JSON.stringify(kind)} is not one this page knows` };
    }
}

// An input for a value of the model's type.
function inputFor(spec, attributes) {
    if (spec.type === "boolean") {
        return el(
            "select",
            attributes,
            el("option", { value: "" }, "–"),
            el("option", { value: "true" }, "true"),
            el("option", { value: "false" }, "false"),
        );
    }
    const hint = spec.range ? `${spec.range[0]} … ${spec.range[1]}` : spec.type;
    return el("input", { ...attributes, placeholder: hint, autocomplete: "off" });
}

function describe(spec) {
    const parts = [spec.type];
    if (spec.unit) parts.push(spec.unit);
    if (spec.range) parts.push(`[${spec.range[0]}, ${spec.range[1]}]`);
    return parts.join(", ");
}

// ---- the views -----------------------------------------------------------

const view = document.getElementById("view");
const trail = document.getElementById("trail");
// Bumped on every route: a refresh of a view no longer shown stops.
let generation = 0;

async function fleetView(refresh) {
    fill(trail, "Fleet");
    const status = el("p", { class: "muted" });
    const body = el("tbody");
    fill(
        view,
        el(
            "section",
            {},
            el("h2", {}, "Gateways"),
            table(["Gateway", "Labels", "State", "Since", "Apps", "Outbox"], body, { id: "gateways" }),
            status,
        ),
    );
    refresh(async () => {
        const { gateways } = await get("/gateways");
        fill(body, gateways.map(gatewayRow));
        fill(status, gateways.length ? "" : "No gateway has reported yet.");
    });
}

function gatewayRow(g) {
    const outbox = g.outbox
        ? `${g.outbox.entries ?? 0} entries · ${g.outbox.points ?? 0} points · ${bytes(g.outbox.bytes ?? 0)}`
        : "–";
    return el(
        "tr",
        { "data-gateway": g.gateway },
        el("td", {}, el("a", { href: `#/gateways/${enc(g.gateway)}` }, g.gateway)),
        el(
            "td",
            { class: "labels" },
            Object.entries(g.labels ?? {})
                .map(([k, v]) => `${k}=${v}`)
                .join(", "),
        ),
        el(
            "td",
            { class: "state" },
            el("span", { class: g.online ? "online" : "offline" }, g.online ? "online" : "offline"),
            g.reason ? el("span", { class: "muted" }, ` (${g.reason})`) : null,
        ),
        el("td", { class: "since" }, when(g.status_time ?? g.stored_at)),
        el(
            "td",
            { class: "apps" },
            g.apps.map((a) =>
                el(
                    "span",
                    { class: "app", "data-app": a.name },
                    el("a", { href: `#/gateways/${enc(g.gateway)}/devices/${enc(a.device)}` }, a.name),
                    ` v${a.version} ${a.state}`,
                    a.restarts ? ` · ${a.restarts} restarts` : "",
                ),
            ),
            g.online ? null : el("div", { class: "muted" }, "as last reported"),
        ),
        el("td", { class: "outbox" }, outbox),
    );
}

async function gatewayView(refresh, gateway) {
    fill(trail, el("a", { href: "#/" }, "Fleet"), " / ", gateway);
    const summary = el("div");
    const apps = el("div");
    const devices = el("div");
    const history = el("div");
    const deployments = el("div");
    fill(
        view,
        el("section", {}, el("h2", {}, `Gateway ${gateway}`), summary),
        el("section", {}, el("h2", {}, "Apps"), apps),
        el("section", {}, el("h2", {}, "Devices"), devices),
        el("section", {}, el("h2", {}, "Deployments"), deployments),
        el("section", {}, el("h2", {}, "Online and offline"), history),
    );
    const device = (d) => el("a", { href: `#/gateways/${enc(gateway)}/devices/${enc(d)}` }, d);
    refresh(async () => {
        const [g, d, deployed] = await Promise.all([
            get(`/gateways/${enc(gateway)}`),
            get(`/gateways/${enc(gateway)}/devices`),
            get(`/deployments?gateway=${enc(gateway)}`),
        ]);
        const cells = gatewayRow(g).querySelectorAll("td.labels, td.state, td.since, td.outbox");
        fill(
            summary,
            table(
                ["Labels", "State", "Since", "Broker", "Outbox"],
                el("tr", { "data-gateway": gateway }, [
                    ...Array.from(cells).slice(0, 3),
                    // With [cloud] urls, the node of the cluster it is on.
                    el("td", { class: "broker" }, g.broker ?? "–"),
                    ...Array.from(cells).slice(3),
                ]),
            ),
        );
        fill(
            apps,
            table(
                ["App", "Device", "State", "Version", "Restarts", "Error"],
                g.apps.map((a) =>
                    el(
                        "tr",
                        { "data-app": a.name },
                        el("td", {}, a.name),
                        el("td", {}, device(a.device)),
                        el("td", {}, a.state),
                        el("td", {}, a.version),
                        el("td", {}, a.restarts),
                        el("td", { class: "error" }, a.error ?? ""),
                    ),
                ),
            ),
        );
        fill(
            devices,
            table(
                ["Device", "App", "Registered", "Model"],
                d.devices.map((x) =>
                    el(
                        "tr",
                        { "data-device": x.device },
                        el("td", {}, device(x.device)),
                        el("td", {}, x.app ?? "–"),
                        el("td", {}, x.registration ? "yes" : "no"),
                        el("td", {}, x.model_known ? "announced" : "not announced"),
                    ),
                ),
            ),
        );
        fill(
            deployments,
            deployed.deployments.length
                ? table(
                      ["Deployment", "Stage", "Message", "Updated"],
                      deployed.deployments.map((x) =>
                          el(
                              "tr",
                              {},
                              el("td", {}, x.id),
                              el("td", { class: x.error ? "error" : "" }, x.stage),
                              el("td", {}, x.error ?? x.message ?? ""),
                              el("td", {}, when(x.updated_at)),
                          ),
                      ),
                  )
                : el("p", { class: "muted" }, "None reported."),
        );
        fill(
            history,
            table(
                ["Time", "State", "Reason"],
                g.history
                    .slice(-20)
                    .reverse()
                    .map((e) =>
                        el(
                            "tr",
                            {},
                            el("td", {}, when(e.time)),
                            el("td", { class: e.online ? "online" : "offline" }, e.online ? "online" : "offline"),
                            el("td", {}, e.reason ?? ""),
                        ),
                    ),
            ),
        );
    });
}

async function deviceView(refresh, gateway, device) {
    const base = `/gateways/${enc(gateway)}/devices/${enc(device)}`;
    fill(
        trail,
        el("a", { href: "#/" }, "Fleet"),
        " / ",
        el("a", { href: `#/gateways/${enc(gateway)}` }, gateway),
        " / ",
        device,
    );
    let model = null;
    let modelProblem = null;
    try {
        model = await get(`${base}/model`);
    } catch (e) {
        if (e.status === 401) return;
        modelProblem = e.message;
    }
    const twinSection = el("section", { id: "twin" }, el("h2", {}, "Twin"));
    const chartsSection = el("section", { id: "charts" }, el("h2", {}, "Series"));
    const actionsSection = el("section", { id: "actions" }, el("h2", {}, "Actions"));
    const tablesSection = el("section", { id: "tables" }, el("h2", {}, "Synced tables"));
    const tableNames = Object.keys((model && model.tables) ?? {});
    tablesSection.append(
        tableNames.length
            ? el(
                  "ul",
                  {},
                  tableNames.map((t) =>
                      el("li", {}, el("a", { href: `#/gateways/${enc(gateway)}/devices/${enc(device)}/tables/${enc(t)}` }, t)),
                  ),
              )
            : el("p", { class: "muted" }, "The model declares no synced table."),
    );
    const alertsSection = el(
        "section",
        { id: "alerts" },
        el("h2", {}, "Alerts"),
        el("p", { class: "muted" }, `The latest ${ALERTS_SHOWN}; the API's /alerts has them all.`),
    );
    fill(view, twinSection, chartsSection, actionsSection, tablesSection, alertsSection);
    if (modelProblem) {
        twinSection.append(el("p", { class: "error", id: "model-problem" }, modelProblem));
    }
    const updateTwin = twinPart(twinSection, base, model);
    const updateCharts = model ? chartsPart(chartsSection, base, model) : async () => {};
    if (model) actionsPart(actionsSection, base, model);
    else actionsSection.append(el("p", { class: "muted" }, "No model: nothing can be called."));
    const alertRows = el("tbody");
    alertsSection.append(table(["Time", "Alert", "Severity", "Values"], alertRows));
    refresh(async () => {
        const [, , alerts] = await Promise.all([
            updateTwin(),
            updateCharts(),
            get(`/alerts?gateway=${enc(gateway)}&device=${enc(device)}&limit=${ALERTS_SHOWN}`),
        ]);
        fill(
            alertRows,
            alerts.alerts.map((a) =>
                el(
                    "tr",
                    { "data-alert": a.id },
                    el("td", {}, when(a.time)),
                    el("td", {}, a.name),
                    el("td", { class: a.severity === "critical" ? "error" : "" }, a.severity),
                    el("td", {}, shown(a.values)),
                ),
            ),
        );
    });
}

// The twin: reported and desired values, and a form for the writable ones.
function twinPart(section, base, model) {
    const attributes = model ? Object.entries(model.attributes ?? {}) : [];
    const cells = {};
    const inputs = {};
    const rows = attributes.map(([name, spec]) => {
        cells[name] = { reported: el("td", { class: "reported" }), desired: el("td", { class: "desired" }) };
        let edit = el("td", { class: "muted" }, "read-only");
        if (spec.writable) {
            inputs[name] = inputFor(spec, { name, "aria-label": `desired ${name}` });
            edit = el("td", {}, inputs[name]);
        }
        return el(
            "tr",
            { "data-attribute": name },
            el("td", {}, name, el("div", { class: "muted" }, describe(spec))),
            cells[name].reported,
            cells[name].desired,
            edit,
        );
    });
    const status = el("p", { id: "desired-status" });
    const ack = el("p", { id: "ack", class: "muted" });
    let pending = null;
    const form = el(
        "form",
        { id: "desired" },
        table(["Attribute", "Reported", "Desired", "Set"], rows),
        Object.keys(inputs).length ? el("button", { type: "submit" }, "Set desired values") : null,
        status,
        ack,
    );
    form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const changes = [];
        const refusals = [];
        for (const [name, input] of Object.entries(inputs)) {
            input.classList.remove("refused");
            if (input.value === "") continue;
            const checked = checkValue(input.value, model.attributes[name]);
            if (checked.error) {
                input.classList.add("refused");
                refusals.push(`${name}: ${checked.error}`);
            } else changes.push([name, checked.json]);
        }
        if (refusals.length) {
            fill(status, el("span", { class: "error" }, `Not sent. The model refuses ${refusals.join("; ")}`));
            return;
        }
        if (!changes.length) {
            fill(status, el("span", { class: "error" }, "Nothing to send: type a value first."));
            return;
        }
        // Built by hand so that integers past 2^53 go out exactly as typed.
        const body = `{"attributes":{${changes.map(([n, json]) => `${JSON.stringify(n)}:${json}`).join(",")}}}`;
        fill(status, "Sending…");
        try {
            const answer = await api("PUT", `${base}/twin/desired`, body);
            pending = answer.version;
            fill(status, el("span", { class: "ok" }, `Sent as version ${answer.version}; waiting for the device.`));
            for (const input of Object.values(inputs)) input.value = "";
        } catch (e) {
            fill(status, el("span", { class: "error" }, `Refused by the server: ${e.message}`));
        }
    });
    section.append(form);
    return async () => {
        let twin = null;
        try {
            twin = await get(`${base}/twin`);
        } catch (e) {
            if (e.status !== 404) throw e;
        }
        const reported = (twin && twin.reported) || {};
        const desired = (twin && twin.desired) || {};
        for (const [name, cell] of Object.entries(cells)) {
            fill(cell.reported, shown(reported[name]));
            fill(cell.desired, shown(desired[name]));
        }
        const last = twin && twin.ack;
        if (last && last.version !== undefined) {
            const rejected = Object.entries(last.rejected ?? {}).map(([n, why]) => `${n} (${why})`);
            fill(
                ack,
                el(
                    "span",
                    { class: rejected.length ? "error" : "ok", "data-version": last.version },
                    `The device acknowledged version ${last.version}: `,
                    last.accepted && last.accepted.length ? `accepted ${last.accepted.join(", ")}` : "accepted nothing",
                    rejected.length ? `; refused ${rejected.join(", ")}` : "",
                ),
            );
            if (pending !== null && last.version >= pending) {
                fill(status, "");
                pending = null;
            }
        }
    };
}

// One chart per series, of its numeric fields, over a chosen window.
function chartsPart(section, base, model) {
    const series = Object.entries(model.series ?? {});
    if (!series.length) {
        section.append(el("p", { class: "muted" }, "The model declares no series."));
        return async () => {};
    }
    const range = el(
        "select",
        { id: "range", "aria-label": "window" },
        RANGES.map(([label, seconds]) => el("option", { value: seconds }, `last ${label}`)),
    );
    section.append(el("label", {}, "Window ", range));
    const charts = series.map(([name, spec]) => {
        const fields = Object.entries(spec.fields ?? {}).filter(([, f]) => f.type === "number" || f.type === "integer");
        const holder = el("div", { class: "chart", "data-series": name });
        const note = el("p", { class: "muted" });
        section.append(el("h3", {}, name), holder, note);
        return { name, fields, holder, note, plot: null };
    });
    const update = async () => {
        const seconds = Number(range.value);
        const to = Date.now() * 1e6 + 60e9; // a minute ahead: gateway clocks drift
        const from = to - (seconds + 60) * 1e9;
        await Promise.all(charts.map((chart) => drawChart(chart, base, from, to)));
    };
    range.addEventListener("change", update);
    return update;
}

async function drawChart(chart, base, from, to) {
    if (!chart.fields.length) {
        fill(chart.note, "No numeric field to chart.");
        return;
    }
    const path = `${base}/series/${enc(chart.name)}`;
    const raw = await get(`${path}?from=${from}&to=${to}&limit=${RAW_POINT_LIMIT}`);
    let times;
    let columns;
    let mode;
    if (raw.points.length < RAW_POINT_LIMIT) {
        mode = "points";
        times = raw.points.map((p) => p.time);
        columns = chart.fields.map(([f]) => raw.points.map((p) => (typeof p.values[f] === "number" ? p.values[f] : null)));
    } else {
        // Too many to draw one by one: the mean of each bucket, per field.
        mode = "buckets";
        const ms = Math.max(1, Math.round((to - from) / 1e6 / BUCKETS));
        const answers = await Promise.all(
            chart.fields.map(([f]) => get(`${path}?from=${from}&to=${to}&field=${enc(f)}&bucket_ms=${ms}`)),
        );
        const starts = [...new Set(answers.flatMap((a) => a.buckets.map((b) => b.start)))].sort((a, b) => a - b);
        times = starts;
        columns = answers.map((a) => {
            const byStart = new Map(a.buckets.map((b) => [b.start, b.mean]));
            return starts.map((s) => byStart.get(s) ?? null);
        });
    }
    const data = [times.map((t) => t / 1e9), ...columns];
    if (!chart.plot) {
        const width = Math.max(300, chart.holder.clientWidth || 800);
        chart.plot = new uPlot(
            {
                width,
                height: 220,
                scales: { x: { time: true } },
                series: [
                    {},
                    ...chart.fields.map(([f, spec], i) => ({
                        label: spec.unit ? `${f} (${spec.unit})` : f,
                        stroke: COLOURS[i % COLOURS.length],
                        width: 1.5,
                        spanGaps: false,
                    })),
                ],
            },
            data,
            chart.holder,
        );
    } else {
        chart.plot.setData(data);
    }
    fill(
        chart.note,
        mode === "points"
            ? `${times.length} points`
            : `${times.length} buckets of ${Math.round((to - from) / 1e6 / BUCKETS)} ms, mean per bucket`,
    );
    window.wasmgateCharts[chart.name] = {
        mode,
        // Milliseconds: nanoseconds past 2^53 are not exact in JavaScript.
        times: times.map((t) => Math.round(t / 1e6)),
        fields: Object.fromEntries(chart.fields.map(([f], i) => [f, columns[i]])),
    };
}

// A button per action, with an input for its argument if it takes one.
function actionsPart(section, base, model) {
    const actions = Object.entries(model.actions ?? {});
    if (!actions.length) {
        section.append(el("p", { class: "muted" }, "The model declares no action."));
        return;
    }
    for (const [name, spec] of actions) {
        const argument = spec.argument
            ? inputFor(spec.argument, { name: "argument", "aria-label": `argument of ${name}` })
            : null;
        const result = el("output", { class: "result" });
        const form = el(
            "form",
            { class: "action", "data-action": name, title: spec.description ?? "" },
            argument,
            el("button", { type: "submit" }, name),
            result,
        );
        form.addEventListener("submit", async (event) => {
            event.preventDefault();
            let body;
            if (argument) {
                const checked = checkValue(argument.value, spec.argument);
                if (checked.error) {
                    argument.classList.add("refused");
                    fill(result, el("span", { class: "error" }, `Not sent: ${checked.error}`));
                    return;
                }
                argument.classList.remove("refused");
                body = `{"argument":${checked.json}}`;
            }
            fill(result, "calling…");
            try {
                const answer = await api("POST", `${base}/actions/${enc(name)}`, body);
                fill(result, el("span", { class: "ok" }, `→ ${shown(answer.result ?? null)}`));
            } catch (e) {
                fill(result, el("span", { class: "error" }, `failed: ${e.message}`));
            }
        });
        section.append(form);
    }
}

// ---- synced tables ---------------------------------------------------------

// The rows of one synced table as the server holds them, a form to edit
// each (what is changed is sent as the server's update), one to delete it,
// one to add a row, and what the merge overwrote.
async function tableView(refresh, gateway, device, name) {
    const base = `/gateways/${enc(gateway)}/devices/${enc(device)}`;
    fill(
        trail,
        el("a", { href: "#/" }, "Fleet"),
        " / ",
        el("a", { href: `#/gateways/${enc(gateway)}` }, gateway),
        " / ",
        el("a", { href: `#/gateways/${enc(gateway)}/devices/${enc(device)}` }, device),
        " / ",
        name,
    );
    const model = await get(`${base}/model`);
    const spec = (model.tables ?? {})[name];
    if (!spec) {
        fill(view, el("p", { class: "error", id: "problem" }, `The device's model declares no table ${name}.`));
        return;
    }
    const columns = Object.entries(spec.columns);
    const path = `${base}/tables/${enc(name)}`;
    const status = el("p", { id: "table-status" });
    // Send edits; the rows are read again at once.
    let reload = async () => {};
    const send = async (edits, what) => {
        fill(status, `${what}…`);
        try {
            const answer = await api("POST", `${path}/edits`, `{"edits":[${edits.join(",")}]}`);
            fill(status, el("span", { class: "ok" }, `${what}: done as the server's changeset ${answer.seq}${answer.sent ? ", sent to the gateway" : "; the gateway pulls it when it is back"}.`));
            await reload();
        } catch (e) {
            fill(status, el("span", { class: "error" }, `${what}: refused by the server: ${e.message}`));
        }
    };
    // The columns typed in `inputs` as JSON members, or why not: `all`
    // sends every column (empty ones as null), otherwise only those typed.
    const typed = (inputs, all) => {
        const members = [];
        for (const [column, input] of Object.entries(inputs)) {
            input.classList.remove("refused");
            if (input.value === "") {
                if (all) members.push(`${JSON.stringify(column)}:null`);
                continue;
            }
            const checked = checkValue(input.value, spec.columns[column]);
            if (checked.error) {
                input.classList.add("refused");
                return { error: `${column}: ${checked.error}` };
            }
            members.push(`${JSON.stringify(column)}:${checked.json}`);
        }
        return { members };
    };
    const rows = el("tbody");
    const addKey = el("input", { name: "key", "aria-label": "key of the new row", placeholder: spec.key ?? "key", autocomplete: "off" });
    const addInputs = Object.fromEntries(columns.map(([c, cs]) => [c, inputFor(cs, { name: c, "aria-label": `new ${c}` })]));
    const add = el(
        "form",
        { id: "add-row" },
        addKey,
        Object.values(addInputs),
        el("button", { type: "submit" }, "Add or replace row"),
    );
    add.addEventListener("submit", async (event) => {
        event.preventDefault();
        const key = addKey.value;
        if (!key) {
            fill(status, el("span", { class: "error" }, "Not sent: a row needs a key."));
            return;
        }
        const checked = typed(addInputs, true);
        if (checked.error) {
            fill(status, el("span", { class: "error" }, `Not sent. The model refuses ${checked.error}`));
            return;
        }
        await send([`{"put":{"key":${JSON.stringify(key)},"columns":{${checked.members.join(",")}}}}`], `Put ${key}`);
        addKey.value = "";
        for (const input of Object.values(addInputs)) input.value = "";
    });
    const overwritten = el("tbody");
    fill(
        view,
        el("section", { id: "rows" }, el("h2", {}, `Rows of ${name}`), el("p", { class: "muted" }, `Rule: ${spec.rule ?? "last-writer-wins"}. Type in a row's fields and save it to change those columns as the server.`), table([spec.key ?? "key", ...columns.map(([c, cs]) => `${c} (${describe(cs)}${cs.rule ? `, ${cs.rule}` : ""})`), ""], rows), add, status),
        el("section", { id: "overwritten" }, el("h2", {}, "Overwritten"), el("p", { class: "muted" }, "Versions that lost to the other side's, newest first."), table(["Key", "Column", "Kept", "Lost"], overwritten)),
    );
    // The rows are drawn once per read; an edit in progress is not
    // redrawn under the user's hands, so they are read on a change only.
    let drawn = "";
    reload = async () => {
        const found = [];
        let after = "";
        for (;;) {
            const page = await get(`${path}?limit=1000&after=${enc(after)}`);
            found.push(...page.rows);
            if (page.rows.length < 1000) break;
            after = page.rows[page.rows.length - 1].key;
        }
        const text = JSON.stringify(found);
        if (text === drawn) return;
        drawn = text;
        fill(
            rows,
            found.map((row) => {
                const inputs = Object.fromEntries(
                    columns.map(([c, cs]) => [c, inputFor(cs, { name: c, "aria-label": `${c} of ${row.key}` })]),
                );
                const save = el("button", { type: "button", class: "save" }, "Save");
                const remove = el("button", { type: "button", class: "delete" }, "Delete");
                save.addEventListener("click", async () => {
                    const checked = typed(inputs, false);
                    if (checked.error) {
                        fill(status, el("span", { class: "error" }, `Not sent. The model refuses ${checked.error}`));
                        return;
                    }
                    if (!checked.members.length) {
                        fill(status, el("span", { class: "error" }, "Nothing to save: type a value first."));
                        return;
                    }
                    await send([`{"update":{"key":${JSON.stringify(row.key)},"columns":{${checked.members.join(",")}}}}`], `Saved ${row.key}`);
                });
                remove.addEventListener("click", () => send([`{"delete":${JSON.stringify(row.key)}}`], `Deleted ${row.key}`));
                return el(
                    "tr",
                    { "data-key": row.key },
                    el("td", {}, row.key),
                    columns.map(([c]) => el("td", { "data-column": c }, el("span", { class: "value" }, shown(row.columns[c] ?? undefined)), inputs[c])),
                    el("td", {}, save, remove),
                );
            }),
        );
    };
    refresh(async () => {
        const [, lost] = await Promise.all([reload(), get(`${path}/overwritten?limit=50`)]);
        fill(
            overwritten,
            lost.overwritten.map((o) =>
                el(
                    "tr",
                    {},
                    el("td", {}, o.key),
                    el("td", {}, o.column || "(the row)"),
                    el("td", {}, `${shown(o.kept.value)} (${o.kept.side})`),
                    el("td", {}, `${shown(o.lost.value)} (${o.lost.side})`),
                ),
            ),
        );
    });
}

// ---- rollouts ------------------------------------------------------------

function counted(counts) {
    const parts = Object.entries(counts ?? {}).map(([state, n]) => `${n} ${state}`);
    return parts.length ? parts.join(", ") : "–";
}

async function rolloutsView(refresh) {
    fill(trail, el("a", { href: "#/" }, "Fleet"), " / Rollouts");
    const body = el("tbody");
    const note = el("p", { class: "muted" });
    fill(
        view,
        el(
            "section",
            {},
            el("h2", {}, "Rollouts"),
            table(["Rollout", "App", "State", "Wave", "Gateways", "Started"], body, { id: "rollouts" }),
            note,
            el("p", { class: "muted" }, "Start one with wasmgate cloud rollout create (it signs the version)."),
        ),
    );
    refresh(async () => {
        const { rollouts } = await get("/rollouts");
        fill(
            body,
            rollouts.map((r) =>
                el(
                    "tr",
                    { "data-rollout": r.id },
                    el("td", {}, el("a", { href: `#/rollouts/${enc(r.id)}` }, r.id)),
                    el("td", {}, r.app),
                    el("td", { class: `state ${r.state}` }, r.state, r.reason ? el("div", { class: "muted" }, r.reason) : null),
                    el("td", {}, r.wave + 1),
                    el("td", { class: "counts" }, counted(r.counts)),
                    el("td", {}, when(r.created_at * 1e6)),
                ),
            ),
        );
        fill(note, rollouts.length ? "" : "No rollout yet.");
    });
}

async function rolloutView(refresh, id) {
    fill(trail, el("a", { href: "#/" }, "Fleet"), " / ", el("a", { href: "#/rollouts" }, "Rollouts"), " / ", id);
    const summary = el("p", { id: "rollout-state" });
    const abortResult = el("output", { id: "abort-result" });
    const abort = el("button", { id: "abort", type: "button" }, "Abort and roll back");
    abort.addEventListener("click", async () => {
        if (!window.confirm(`Abort rollout ${id}? Gateways that took its version are rolled back.`)) return;
        fill(abortResult, "aborting…");
        try {
            await api("POST", `/rollouts/${enc(id)}/abort`);
            fill(abortResult, el("span", { class: "ok" }, "Aborted: the gateways that took it are being rolled back."));
        } catch (e) {
            fill(abortResult, el("span", { class: "error" }, `Refused: ${e.message}`));
        }
    });
    const waves = el("tbody");
    const gateways = el("tbody");
    fill(
        view,
        el("section", {}, el("h2", {}, `Rollout ${id}`), summary, abort, " ", abortResult),
        el(
            "section",
            {},
            el("h2", {}, "Waves"),
            table(["Wave", "Reaches", "Soak", "Gateways"], waves, { id: "waves" }),
        ),
        el(
            "section",
            {},
            el("h2", {}, "Gateways"),
            table(["Gateway", "Wave", "State", "Outcome"], gateways, { id: "rollout-gateways" }),
        ),
    );
    refresh(async () => {
        const r = await get(`/rollouts/${enc(id)}`);
        fill(
            summary,
            `${r.app} to ${r.target.selector ? `gateways matching ${r.target.selector}` : (r.target.gateways ?? []).join(", ")}: `,
            el("span", { class: `state ${r.state}` }, r.state),
            r.reason ? ` (${r.reason})` : "",
        );
        abort.hidden = r.state !== "running";
        fill(
            waves,
            r.waves.map((w) =>
                el(
                    "tr",
                    { "data-wave": w.wave },
                    el("td", {}, w.wave + 1),
                    el("td", {}, `${w.percent}% (${w.reach} gateways)`),
                    el("td", {}, `${w.soak_s} s`),
                    el("td", { class: "counts" }, counted(w.counts)),
                ),
            ),
        );
        fill(
            gateways,
            r.gateways.map((g) =>
                el(
                    "tr",
                    { "data-gateway": g.gateway },
                    el("td", {}, el("a", { href: `#/gateways/${enc(g.gateway)}` }, g.gateway)),
                    el("td", {}, g.wave === null ? "–" : g.wave + 1),
                    el("td", { class: "state" }, g.state),
                    el("td", {}, g.detail ?? ""),
                ),
            ),
        );
    });
}

// ---- provisioning ----------------------------------------------------------

function labelsText(labels) {
    const parts = Object.entries(labels ?? {}).map(([k, v]) => `${k}=${v}`);
    return parts.length ? parts.join(", ") : "–";
}

async function provisioningView(refresh) {
    fill(trail, el("a", { href: "#/" }, "Fleet"), " / Provisioning");
    const claims = el("tbody");
    const allow = el("tbody");
    const log = el("tbody");
    const revoked = el("output", { id: "revoke-result" });
    const section = (title, ...children) => el("section", {}, el("h2", {}, title), ...children);
    fill(
        view,
        section(
            "Claims",
            table(["Claim", "Accepted", "State", ""], claims, { id: "claims" }),
            revoked,
            el("p", { class: "muted" }, "Accept one with wasmgate cloud provisioning claim NAME."),
        ),
        section(
            "Allow-list",
            table(["Serial", "Gateway", "Labels", "First versions", "Issued"], allow, { id: "allow" }),
            el("p", { class: "muted" }, "Add one with wasmgate cloud provisioning allow SERIAL --gateway ID."),
        ),
        section(
            "Requests",
            table(["When", "Claim", "Serial", "Outcome", "Gateway"], log, { id: "provisioning-log" }),
        ),
    );
    refresh(async () => {
        const p = await get("/provisioning");
        const issued = new Map(p.issued.map((i) => [i.serial, i]));
        fill(
            claims,
            p.claims.map((c) => {
                const cells = [
                    el("td", {}, c.name),
                    el("td", {}, when(c.created_at * 1e6)),
                    el("td", { class: "state" }, c.revoked_at === null ? "accepted" : `revoked ${when(c.revoked_at * 1e6)}`),
                ];
                const button = el("button", { type: "button", "data-revoke": c.name }, "Revoke");
                button.hidden = c.revoked_at !== null;
                button.addEventListener("click", async () => {
                    if (!window.confirm(`Revoke claim ${c.name}? Gateways that ask with it from now on are refused.`)) return;
                    try {
                        await api("POST", `/provisioning/claims/${enc(c.name)}/revoke`);
                        fill(revoked, el("span", { class: "ok" }, `Claim ${c.name} revoked.`));
                    } catch (e) {
                        fill(revoked, el("span", { class: "error" }, `Refused: ${e.message}`));
                    }
                });
                return el("tr", { "data-claim": c.name }, ...cells, el("td", {}, button));
            }),
        );
        fill(
            allow,
            p.allow.map((a) => {
                const done = issued.get(a.serial);
                return el(
                    "tr",
                    { "data-serial": a.serial },
                    el("td", {}, a.serial),
                    el("td", {}, el("a", { href: `#/gateways/${enc(a.gateway)}` }, a.gateway)),
                    el("td", {}, labelsText(a.labels)),
                    el("td", {}, a.deploy.length ? a.deploy.map((id) => el("a", { href: `#/rollouts/${enc(id)}` }, id, " ")) : "–"),
                    el("td", {}, done ? when(done.issued_at * 1e6) : "not yet"),
                );
            }),
        );
        fill(
            log,
            p.log.map((e) =>
                el(
                    "tr",
                    { "data-request": e.request },
                    el("td", {}, when(e.at * 1e6)),
                    el("td", {}, e.claim),
                    el("td", {}, e.serial ?? "–"),
                    el("td", { class: `state ${e.outcome}` }, e.outcome, e.reason ? el("div", { class: "muted" }, e.reason) : null),
                    el("td", {}, e.gateway ?? "–"),
                ),
            ),
        );
    });
}

// ---- routes, refreshes and the token -------------------------------------

const routes = [
    [/^#?\/?$/, fleetView],
    [/^#\/gateways\/([^/]+)\/?$/, gatewayView],
    [/^#\/gateways\/([^/]+)\/devices\/([^/]+)\/?$/, deviceView],
    [/^#\/gateways\/([^/]+)\/devices\/([^/]+)\/tables\/([^/]+)\/?$/, tableView],
    [/^#\/rollouts\/?$/, rolloutsView],
    [/^#\/rollouts\/([^/]+)\/?$/, rolloutView],
    [/^#\/provisioning\/?$/, provisioningView],
];

function route() {
    const mine = ++generation;
    const problem = el("p", { class: "error", id: "problem" });
    // Runs `update` now and every REFRESH_MS while this view is shown; a
    // failure is shown and the next refresh tries again.
    const refresh = (update) => {
        view.append(problem);
        const tick = async () => {
            if (mine !== generation) return;
            try {
                await update();
                fill(problem, "");
            } catch (e) {
                if (e.status !== 401) fill(problem, e.message);
                if (e.status === 401) return;
            }
            if (mine === generation) setTimeout(tick, REFRESH_MS);
        };
        tick();
    };
    for (const [pattern, show] of routes) {
        const match = location.hash.match(pattern);
        if (match) {
            show(refresh, ...match.slice(1).map(decodeURIComponent)).catch((e) => {
                if (e.status !== 401) fill(view, el("p", { class: "error", id: "problem" }, e.message));
            });
            return;
        }
    }
    fill(view, el("p", { class: "error" }, `No such page: ${location.hash}`));
}

const login = document.getElementById("login");

function showLogin(why) {
    generation++;
    login.hidden = false;
    fill(view);
    fill(document.getElementById("login-error"), why);
    document.getElementById("token").focus();
}

login.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("wasmgate-token", document.getElementById("token").value);
    document.getElementById("token").value = "";
    login.hidden = true;
    showWho();
    route();
});

function showWho() {
    const who = document.getElementById("who");
    if (!token()) {
        fill(who);
        return;
    }
    fill(
        who,
        "token given · ",
        el(
            "a",
            {
                href: "#",
                id: "forget",
                onclick: (event) => {
                    event.preventDefault();
                    sessionStorage.removeItem("wasmgate-token");
                    showWho();
                    route();
                },
            },
            "forget it",
        ),
    );
}

window.addEventListener("hashchange", route);
showWho();
route();
