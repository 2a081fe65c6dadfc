// The playground: streams a response over the /v1/responses websocket with the user's session (same origin,
// the session's CSRF token and the organization in the query), shows token counts and latency, and keeps the
// curl and Python snippets in step with the form. A static file: the Content-Security-Policy stays strict.
"use strict";

(function () {
  function value(id) { return document.getElementById(id).value; }

  function request() {
    var messages = [];
    var system = value("pg-system").trim();
    if (system) { messages.push({ role: "system", content: system }); }
    messages.push({ role: "user", content: value("pg-message") });
    return {
      model: value("pg-model"),
      messages: messages,
      temperature: parseFloat(value("pg-temperature")),
      max_tokens: parseInt(value("pg-max-tokens"), 10),
    };
  }

  function shellQuote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }

  function pyString(text) { return JSON.stringify(text); }

  function snippets(base) {
    var body = request();
    body.stream = true;
    document.getElementById("pg-curl").textContent =
      "curl " + base + "/v1/chat/completions \\\n" +
      "  -H \"Authorization: Bearer $BITNET_API_KEY\" -H \"Content-Type: application/json\" \\\n" +
      "  -d " + shellQuote(JSON.stringify(body));
    var msgs = body.messages.map(function (m) {
      return "{\"role\": " + pyString(m.role) + ", \"content\": " + pyString(m.content) + "}";
    }).join(", ");
    document.getElementById("pg-python").textContent =
      "import os\n\nfrom openai import OpenAI\n\n" +
      "client = OpenAI(base_url=" + pyString(base + "/v1") + ", api_key=os.environ[\"BITNET_API_KEY\"])\n" +
      "for chunk in client.chat.completions.create(\n" +
      "    model=" + pyString(body.model) + ",\n    messages=[" + msgs + "],\n" +
      "    temperature=" + body.temperature + ", max_tokens=" + body.max_tokens + ", stream=True,\n):\n" +
      "    print(chunk.choices[0].delta.content or \"\", end=\"\")";
  }

  function setup(form) {
    var base = form.getAttribute("data-base");
    var status = document.getElementById("pg-status");
    var output = document.getElementById("pg-output");
    var send = document.getElementById("pg-send");
    var stop = document.getElementById("pg-stop");
    var socket = null;
    var started = 0;
    var first = 0;

    function show(id, text) { document.getElementById(id).textContent = text; }

    function idle(text) {
      status.textContent = text;
      send.disabled = false;
      stop.disabled = true;
    }

    function connect(onOpen) {
      if (socket && socket.readyState === WebSocket.OPEN) { onOpen(); return; }
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var query = "?csrf_token=" + encodeURIComponent(form.getAttribute("data-csrf")) +
        "&organization=" + encodeURIComponent(form.getAttribute("data-org"));
      socket = new WebSocket(scheme + location.host + "/v1/responses" + query);
      socket.addEventListener("open", onOpen);
      socket.addEventListener("close", function () { socket = null; if (send.disabled) { idle("Disconnected."); } });
      socket.addEventListener("message", function (msg) { handle(JSON.parse(msg.data)); });
    }

    function handle(event) {
      if (event.type === "response.created") {
        status.textContent = "Generating…";
      } else if (event.type === "response.output_text.delta") {
        if (!first) {
          first = performance.now();
          show("pg-ttft", Math.round(first - started) + " ms");
        }
        output.textContent += event.delta;
      } else if (event.type === "response.completed" || event.type === "response.cancelled" ||
                 event.type === "response.failed") {
        var usage = event.response.usage || {};
        show("pg-input-tokens", usage.input_tokens === undefined ? "–" : String(usage.input_tokens));
        show("pg-output-tokens", usage.output_tokens === undefined ? "–" : String(usage.output_tokens));
        show("pg-latency", Math.round(performance.now() - started) + " ms");
        var done = { "response.completed": "Done.", "response.cancelled": "Stopped." };
        idle(done[event.type] || ("Failed: " + ((event.response.error || {}).message || "error")));
      } else if (event.type === "error") {
        idle("Refused: " + event.error.message);
      }
    }

    form.addEventListener("input", function () { snippets(base); });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var body = request();
      output.textContent = "";
      ["pg-input-tokens", "pg-output-tokens", "pg-ttft", "pg-latency"].forEach(function (id) { show(id, "–"); });
      send.disabled = true;
      stop.disabled = false;
      status.textContent = "Connecting…";
      connect(function () {
        started = performance.now();
        first = 0;
        socket.send(JSON.stringify({
          type: "response.create", model: body.model, input: body.messages,
          temperature: body.temperature, max_output_tokens: body.max_tokens,
        }));
      });
    });
    stop.addEventListener("click", function () {
      if (socket) { socket.send(JSON.stringify({ type: "response.cancel" })); }
    });
    snippets(base);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("playground-form");
    if (form) { setup(form); }
  });
})();
