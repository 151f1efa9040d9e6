#!/usr/bin/env node
// The client-matrix driver of the official MCP TypeScript SDK (@modelcontextprotocol/sdk 1.x), and a worked
// example of how a TypeScript program connects to erlmcp over each transport.
//
//   node22 tests/interop/drivers/typescript.mjs --url http://127.0.0.1:PORT --key KEY
//       --transport streamable-http|sse|stdio|websocket [--mode legacy] [--steps a,b,c]
//       [--stdio-command JSON-ARRAY] [--stdio-env JSON-OBJECT] [--cut-url URL]
//
// The steps and the report are the matrix contract (tests/interop/clients.py). It prints one JSON report on
// stdout (logs go to stderr) and exits 0 even when steps fail: a failed step reports
// {"error": "<type>: <message>"}. It exits 2 only for bad arguments. --cut-url is the control URL of the
// test's cutting proxy (tests/interop/proxy.py), POSTed before the 2nd and 3rd change of list_changed.
//
// The SDK is imported by file URL from MCP_TS_SDK_DIR (default: the copy scripts/install-clients.sh puts under
// .tools/), because ES modules ignore NODE_PATH. Node 22 or later: WebSocketClientTransport needs the global
// WebSocket.

import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const SDK_DIR =
  process.env.MCP_TS_SDK_DIR ?? join(ROOT, ".tools/clients/typescript-sdk/node_modules/@modelcontextprotocol/sdk");

const TRANSPORTS = ["streamable-http", "sse", "stdio", "websocket"];
const STEPS = ["tools", "call", "resource", "prompt", "progress", "reconnection", "list_changed", "unauthorized"];
const WRONG_KEY = "wrong-key-0000000000000000";
const STEP_TIMEOUT_MS = 30_000; // longest any one step may take, so that the report is always printed
const REQUEST_TIMEOUT_MS = 10_000;
const NOTIFICATION_WAIT_MS = 5_000; // a list_changed may wait for the GET stream's reconnection (~1 s)
const SETTLE_MS = 500; // after the third change: time for a duplicate to arrive, were one sent
const QUIET_MS = 3_000; // before the first change: many keep-alives, and longer than a reader waits for a writer

// An error the SDK reports for a race of its own. Its Protocol handles a response at once but a notification a
// microtask later; when the last notifications/progress and the result come in one read (the SSE and stdio
// transports dispatch a chunk's messages in one loop), the result drops the progress handler first and the
// notification is reported as "for an unknown token". The server sent them in order.
const PROGRESS_RACE = {
  pattern: /^Error: Received a progress notification for an unknown token/,
  why: "https://github.com/modelcontextprotocol/typescript-sdk/issues/2580",
};

const sdk = (module) => import(pathToFileURL(join(SDK_DIR, "dist/esm", module)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { SSEClientTransport } = await sdk("client/sse.js");
const { StdioClientTransport } = await sdk("client/stdio.js");
const { WebSocketClientTransport } = await sdk("client/websocket.js");
const { ToolListChangedNotificationSchema } = await sdk("types.js");
const SDK_VERSION = JSON.parse(readFileSync(join(SDK_DIR, "package.json"), "utf8")).version;

// -- Connecting ----------------------------------------------------------------------------------------------

const NativeWebSocket = globalThis.WebSocket;

/** The shim that lets WebSocketClientTransport authenticate: it takes only a URL and calls
 * `new WebSocket(url, "mcp")`, so the key rides as a second subprotocol (the Kubernetes bearer form, base64url
 * without padding) on a subclass of the global WebSocket. */
function webSocketWithKey(key) {
  const bearer = `base64url.bearer.authorization.k8s.io.${Buffer.from(key).toString("base64url")}`;
  return class extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, [].concat(protocols ?? [], bearer));
    }
  };
}

/** A transport for `options.transport`, sending `key`; `onGetStream` hears of every SSE stream the streamable
 * HTTP transport opens with GET (the stream server-initiated notifications arrive on). */
function makeTransport(options, key, onGetStream = () => {}) {
  const headers = { "X-API-Key": key };
  switch (options.transport) {
    case "streamable-http":
      return new StreamableHTTPClientTransport(new URL(`${options.url}/mcp`), {
        requestInit: { headers },
        fetch: watchGetStreams(onGetStream),
      });
    case "sse":
      // requestInit's headers go on the POSTs and, through the transport's own fetch, on the EventSource GET.
      return new SSEClientTransport(new URL(`${options.url}/sse`), { requestInit: { headers } });
    case "stdio":
      // Without `env` the SDK passes the child only HOME, PATH and a few more; the contract merges.
      return new StdioClientTransport({
        command: options.stdioCommand[0],
        args: options.stdioCommand.slice(1),
        env: { ...process.env, ...options.stdioEnv },
      });
    case "websocket":
      // The transport reads the global at start(), so the key in force is the last one set here.
      globalThis.WebSocket = webSocketWithKey(key);
      return new WebSocketClientTransport(new URL(`${options.url.replace(/^http/, "ws")}/ws`));
  }
}

/** A fetch that calls `opened` when a GET answers 200: the transport opens its GET stream in the background
 * after initialize and again after each reconnection, and says nothing when it does. */
function watchGetStreams(opened) {
  return async (url, init) => {
    const response = await fetch(url, init);
    if (init?.method === "GET" && response.ok) opened();
    return response;
  };
}

/** Record the negotiated protocol version on the transport as `negotiatedVersion`. The Client keeps it to itself
 * and only hands it to transports that have setProtocolVersion (the HTTP ones, for their header). */
function recordProtocolVersion(transport) {
  const forward = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (version) => {
    transport.negotiatedVersion = version;
    forward?.(version);
  };
  return transport;
}

function newClient() {
  return new Client({ name: "erlmcp-interop", version: SDK_VERSION }, { capabilities: {} });
}

// -- Steps ---------------------------------------------------------------------------------------------------

const timeout = { timeout: REQUEST_TIMEOUT_MS };

async function listTools(client) {
  const { tools } = await client.listTools(undefined, timeout);
  return tools.map((tool) => tool.name);
}

async function callSimpleText(client) {
  return firstText(await client.callTool({ name: "test_simple_text", arguments: {} }, undefined, timeout));
}

async function readStaticText(client) {
  const { contents } = await client.readResource({ uri: "test://static-text" }, timeout);
  return contents[0].text;
}

async function getPrompt(client) {
  const params = { name: "test_prompt_with_arguments", arguments: { arg1: "a", arg2: "b" } };
  const { messages } = await client.getPrompt(params, timeout);
  return messages[0].content.text;
}

async function progress(client) {
  const seen = [];
  // onprogress makes the SDK send a progressToken and route notifications/progress to it.
  const onprogress = ({ progress }) => seen.push(progress);
  await client.callTool({ name: "test_tool_with_progress", arguments: {} }, undefined, { ...timeout, onprogress });
  return seen;
}

async function reconnection(client) {
  // In a 2025-11-25 session the server ends this call's stream after its first event; the transport reconnects
  // with GET and Last-Event-ID (after the server's `retry`) and the result arrives on the resumed stream.
  return firstText(await client.callTool({ name: "test_reconnection", arguments: {} }, undefined, timeout));
}

/** How many notifications/tools/list_changed arrive while test_trigger_tool_change runs three times, each
 * call waiting up to NOTIFICATION_WAIT_MS for its notification. Behind the test's cutting proxy the GET stream's
 * connection is cut between the calls, so the second and third changes happen while the client is away. */
async function listChanged(client, getStreams, cut) {
  let seen = 0;
  client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
    seen += 1;
  });
  // Notifications outside a call arrive on the GET stream, which the transport opens in the background.
  if (getStreams) await until(() => getStreams.opened > 0, STEP_TIMEOUT_MS, "no GET stream opened");
  // A quiet stream (keep-alives only) must stay open for the first change.
  await new Promise((resolve) => setTimeout(resolve, QUIET_MS));
  for (const wanted of [1, 2, 3]) {
    if (wanted > 1 && cut) await cut();
    await client.callTool({ name: "test_trigger_tool_change", arguments: {} }, undefined, timeout);
    await until(() => seen >= wanted, NOTIFICATION_WAIT_MS).catch(() => {});
  }
  // A little longer: a change delivered twice (a replay over a live stream) must show as a fourth.
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  return seen;
}

/** Ask the cutting proxy to drop the connections it carries (POST to its control URL) and wait for its answer. */
async function cut(url) {
  const response = await fetch(url, { method: "POST" });
  if (!response.ok) throw new Error(`the proxy refused the cut: HTTP ${response.status}`);
}

/** What the client raises when it connects with a wrong key. */
async function unauthorized(options) {
  const client = newClient();
  client.onerror = () => {}; // the transport reports the refusal here too; it is expected, not a client error
  try {
    await client.connect(makeTransport(options, WRONG_KEY), timeout);
  } catch (error) {
    return describe(error);
  } finally {
    await client.close().catch(() => {});
  }
  throw new Error("the server accepted a wrong key");
}

// -- The run -------------------------------------------------------------------------------------------------

async function drive(options) {
  const report = {
    client: "typescript-sdk",
    version: SDK_VERSION,
    transport: options.transport,
    mode: options.mode,
  };
  const clientErrors = watchClientErrors();
  const getStreams = options.transport === "streamable-http" ? { opened: 0 } : null;
  const onGetStream = () => (getStreams.opened += 1);

  const client = newClient();
  // The Client wraps the transport's onerror, so this one callback hears the transport's errors too.
  client.onerror = (error) => clientErrors.record(error);
  const transport = recordProtocolVersion(makeTransport(options, options.key, onGetStream));
  let connected = false;
  await step(report, "protocol", async () => {
    await client.connect(transport, timeout);
    connected = true;
    return transport.negotiatedVersion;
  });
  const session = {
    tools: () => listTools(client),
    call: () => callSimpleText(client),
    resource: () => readStaticText(client),
    prompt: () => getPrompt(client),
    progress: () => progress(client),
    reconnection: () => reconnection(client),
    list_changed: () => listChanged(client, getStreams, options.cutUrl && (() => cut(options.cutUrl))),
  };
  for (const name of options.steps) {
    if (name in session) await step(report, name, connected ? session[name] : notConnected);
  }
  // close() aborts the streamable HTTP transport's GET stream, and the transport reports its own abort through
  // onerror ("SSE stream disconnected: AbortError"): the session is over, so its errors are no longer heard.
  client.onerror = () => {};
  await withDeadline(client.close(), STEP_TIMEOUT_MS, "close").catch((error) => clientErrors.record(error));

  // stdio has no credentials to refuse.
  if (options.steps.includes("unauthorized") && options.transport !== "stdio") {
    await step(report, "unauthorized", () => unauthorized(options));
  }
  report.client_errors = clientErrors.seen;
  if (clientErrors.known.length) report.known_client_errors = clientErrors.known;
  return report;
}

async function notConnected() {
  throw new Error("not run: the client did not connect (see protocol)");
}

/** Run one step into `report[name]`: its value, or {"error": ...} when it raised or outran STEP_TIMEOUT_MS. */
async function step(report, name, run) {
  try {
    report[name] = await withDeadline(run(), STEP_TIMEOUT_MS, name);
  } catch (error) {
    report[name] = { error: describe(error) };
  }
}

/** What the SDK reports as errors: onerror callbacks, console.error lines (still written to stderr) and
 * unhandled rejections, in `seen`; the SDK's own PROGRESS_RACE, with its issue, in `known`. */
function watchClientErrors() {
  const errors = { seen: [], known: [] };
  errors.record = (error) => {
    const text = typeof error === "string" ? error : describe(error);
    if (PROGRESS_RACE.pattern.test(text)) errors.known.push(`${text} [${PROGRESS_RACE.why}]`);
    else errors.seen.push(text);
  };
  const write = console.error.bind(console);
  console.error = (...args) => {
    errors.record(args.map((arg) => (arg instanceof Error ? describe(arg) : String(arg))).join(" "));
    write(...args);
  };
  process.on("unhandledRejection", (reason) => errors.record(`unhandled rejection: ${describe(reason)}`));
  return errors;
}

// -- Helpers -------------------------------------------------------------------------------------------------

function firstText(result) {
  if (result.isError) throw new Error(`tool error: ${JSON.stringify(result.content)}`);
  return result.content[0].text;
}

/** "<type>: <message>", with the HTTP status the SDK keeps in `code` when the message leaves it out. */
function describe(error) {
  if (!(error instanceof Error)) return `${typeof error}: ${JSON.stringify(error)}`;
  let text = `${error.constructor.name}: ${error.message}`;
  if (error.code !== undefined && !text.includes(String(error.code))) text += ` (code ${error.code})`;
  if (error.cause) text += ` (cause: ${describe(error.cause)})`;
  return text;
}

async function withDeadline(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function until(condition, ms, failure = "timed out") {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(failure);
    await new Promise((done) => setTimeout(done, 50));
  }
}

// -- Arguments -----------------------------------------------------------------------------------------------

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      url: { type: "string" },
      transport: { type: "string" },
      key: { type: "string", default: "" },
      mode: { type: "string" },
      steps: { type: "string" },
      "stdio-command": { type: "string" },
      "stdio-env": { type: "string", default: "{}" },
      "cut-url": { type: "string" },
    },
  });
  if (!TRANSPORTS.includes(values.transport)) throw new Error(`--transport must be one of ${TRANSPORTS.join(", ")}`);
  if (values.transport !== "stdio" && !values.url) throw new Error("--url is required");
  if (values.mode !== undefined && values.mode !== "legacy") {
    throw new Error("--mode: the TypeScript SDK 1.x has only the initialize handshake (legacy)");
  }
  const stdioCommand = values["stdio-command"] === undefined ? undefined : JSON.parse(values["stdio-command"]);
  if (values.transport === "stdio" && !(Array.isArray(stdioCommand) && stdioCommand.length > 0)) {
    throw new Error("--stdio-command must be a non-empty JSON array for --transport stdio");
  }
  const steps = values.steps?.split(",").filter(Boolean) ?? STEPS;
  const unknown = steps.filter((name) => !STEPS.includes(name));
  if (unknown.length) throw new Error(`unknown steps: ${unknown.join(", ")} (known: ${STEPS.join(", ")})`);
  return {
    url: values.url?.replace(/\/+$/, ""),
    transport: values.transport,
    key: values.key,
    mode: values.mode ?? null,
    steps,
    stdioCommand,
    stdioEnv: JSON.parse(values["stdio-env"]),
    cutUrl: values["cut-url"],
  };
}

let options;
try {
  options = parseOptions(process.argv.slice(2));
} catch (error) {
  console.error(`typescript.mjs: ${error.message}`);
  process.exit(2);
}
const report = await drive(options);
process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0));
