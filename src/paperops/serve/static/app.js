/* paperops web page: plain JavaScript, no build step, no external resources (works offline).
 *
 * Talks to the same API as every other client: GET v1/model (name, version, limits, the
 * cross-list head, whether explain works, and the language model under `generator`),
 * POST v1/classify (cross_lists=true only when the model has a cross-list head), and
 * POST v1/generate?stream=true (server-sent events read from a fetch stream: EventSource cannot
 * POST). URLs are relative so the page also works behind a path prefix. Model and user text
 * only ever goes in through textContent.
 */
(function () {
  "use strict";

  var DEFAULT_LIMITS = { title_max_chars: 500, abstract_max_chars: 6000, max_top_k: 20 };
  var TOP_K = 5;
  var STATUS_MEANING = {
    400: "Bad request",
    404: "Not found",
    408: "Request timeout",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Server error",
    502: "Bad gateway",
    503: "Service busy or not ready",
    504: "Gateway timeout"
  };

  var limits = Object.assign({}, DEFAULT_LIMITS);
  var examples = [];
  var busy = false;
  var crossLists = null;  // v1/model's model.cross_lists: null = no head, never ask for them

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function pct(p) {
    var v = Number(p) * 100;
    if (!isFinite(v)) return "–";
    if (v > 0 && v < 0.1) return "<0.1%";
    return v.toFixed(1) + "%";
  }

  function describeModel(m) {
    if (!m || !m.name) return "";
    var version = m.version ? String(m.version) : "";
    if (/^\d/.test(version)) version = "v" + version;
    var parts = [m.name + (version ? " " + version : "")];
    if (m.family) parts.push(m.family);
    if (m.runtime) parts.push(m.runtime);
    return parts.join(" · ");
  }

  /* --- tabs: built only when there is more than one panel --------------------------------- */

  function setupTabs() {
    var panels = Array.prototype.slice.call(document.querySelectorAll("main > .panel"));
    var nav = $("tabs");
    if (panels.length < 2) return;
    panels.forEach(function (panel, i) {
      var tab = el("button", "tab", panel.getAttribute("data-tab") || panel.id);
      tab.type = "button";
      tab.id = "tab-" + panel.id;
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-controls", panel.id);
      panel.setAttribute("role", "tabpanel");
      panel.setAttribute("aria-labelledby", tab.id);
      tab.addEventListener("click", function () { selectTab(panels, i); });
      tab.addEventListener("keydown", function (e) {  // the WAI-ARIA tabs pattern
        var next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: panels.length - 1 }[e.key];
        if (next === undefined) return;
        e.preventDefault();
        next = (next + panels.length) % panels.length;
        selectTab(panels, next);
        $("tab-" + panels[next].id).focus();
      });
      nav.appendChild(tab);
    });
    nav.hidden = false;
    selectTab(panels, 0);
  }

  function selectTab(panels, index) {
    panels.forEach(function (panel, i) {
      var tab = $("tab-" + panel.id);
      tab.setAttribute("aria-selected", i === index ? "true" : "false");
      tab.tabIndex = i === index ? 0 : -1;
      panel.hidden = i !== index;
    });
  }

  /* --- character counters ----------------------------------------------------------------- */

  function updateCounter(field) {
    var max = limits[field + "_max_chars"];
    var n = $(field).value.length;
    var counter = $(field + "-count");
    counter.textContent = n.toLocaleString("en-US") + " / " + Number(max).toLocaleString("en-US");
    counter.classList.toggle("over", n > max);
    $(field).setAttribute("aria-invalid", n > max ? "true" : "false");
  }

  function updateCounters() {
    updateCounter("title");
    updateCounter("abstract");
  }

  /* --- model info and limits -------------------------------------------------------------- */

  function loadModel() {
    return fetch("v1/model", { headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (body) {
        var m = (body && body.model && typeof body.model === "object") ? body.model : body;
        var l = (body && body.limits) || (m && m.limits) || {};
        ["title_max_chars", "abstract_max_chars", "max_top_k"].forEach(function (k) {
          if (Number.isInteger(l[k]) && l[k] > 0) limits[k] = l[k];
        });
        updateCounters();
        $("model-info").textContent = "Model: " + describeModel(m);
        crossLists = m && m.cross_lists && typeof m.cross_lists === "object" ? m.cross_lists : null;
        setExplain(body && body.explain);
        setGenerator(body && Object.prototype.hasOwnProperty.call(body, "generator")
          ? body.generator : null, body);
      })
      .catch(function () {
        $("model-info").textContent = "Model details unavailable";
        $("model-info").classList.add("muted");
        setGenerator(undefined, null);  // unknown: let the server answer a request
      });
  }

  /* `e`: v1/model's explain entry; missing (an older server) leaves the checkbox as it is and
   * the server answers a request it cannot serve with a 422. */
  function setExplain(e) {
    if (!e || typeof e !== "object" || e.available !== false) return;
    var reason = e.reason ? String(e.reason) : "Explanations are not available for this model";
    var box = $("explain");
    box.checked = false;
    box.disabled = true;
    box.title = reason;
    box.parentNode.title = reason;  // a disabled input shows no tooltip of its own
    box.parentNode.classList.add("disabled");
    $("explain-hint").textContent = "Unavailable: " + reason;
  }

  /* --- examples --------------------------------------------------------------------------- */

  function loadExamples() {
    return fetch("static/examples.json")
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (list) {
        examples = Array.isArray(list) ? list : [];
        var select = $("example");
        examples.forEach(function (ex, i) {
          var opt = el("option", null, ex.field + ": " + ex.title);
          opt.value = String(i);
          select.appendChild(opt);
        });
      })
      .catch(function () {
        $("example").disabled = true;
      });
  }

  function pickExample() {
    var ex = examples[Number($("example").value)];
    if (!ex || $("example").value === "") return;
    $("title").value = ex.title;
    $("abstract").value = ex.abstract;
    updateCounters();
    hideError();
  }

  /* --- errors ----------------------------------------------------------------------------- */

  function hideError() {
    $("error").hidden = true;
    $("error-list").textContent = "";
  }

  function showError(title, lines) {
    $("error-title").textContent = title;
    var list = $("error-list");
    list.textContent = "";
    (lines || []).forEach(function (line) { list.appendChild(el("li", null, line)); });
    $("result").hidden = true;  // an answer to an earlier paper must not look like this one's
    $("error").hidden = false;
  }

  /* "body.papers.0.abstract" -> "abstract" for a single-paper request. */
  function fieldName(loc) {
    if (!Array.isArray(loc)) return "";
    var parts = loc.slice();
    if (parts[0] === "body") parts.shift();
    if (parts[0] === "papers" && typeof parts[1] === "number") parts = parts.slice(2);
    return parts.join(".");
  }

  function detailLines(detail) {
    if (Array.isArray(detail)) {
      return detail.map(function (d) {
        if (d && typeof d === "object") {
          var name = fieldName(d.loc);
          var msg = d.msg || d.message || JSON.stringify(d);
          return name ? name + ": " + msg : msg;
        }
        return String(d);
      });
    }
    if (detail && typeof detail === "object") {
      return [detail.message || detail.msg || JSON.stringify(detail)];
    }
    return detail ? [String(detail)] : [];
  }

  /* The generate panel names the field and the rule: "temperature: Input should be greater
   * than 0 (greater_than)". */
  function ruleLines(detail) {
    if (!Array.isArray(detail)) return detailLines(detail);
    return detail.map(function (d) {
      if (!d || typeof d !== "object") return String(d);
      var name = fieldName(d.loc);
      var msg = d.msg || d.message || JSON.stringify(d);
      var rule = d.type ? " (" + d.type + ")" : "";
      return (name ? name + ": " : "") + msg + rule;
    });
  }

  function showHttpError(response, body) {
    var meaning = STATUS_MEANING[response.status] || response.statusText || "Error";
    var lines = detailLines(body && (body.detail !== undefined ? body.detail : body.error));
    if (!lines.length && body && (body.error || body.message)) {
      lines = [String(body.error || body.message)];
    }
    var retry = response.headers.get("Retry-After");
    if (retry) lines.push("Retry after " + retry + " s.");
    showError(meaning + " (HTTP " + response.status + ")", lines);
  }

  /* --- classify --------------------------------------------------------------------------- */

  function setBusy(on) {
    busy = on;
    $("classify").disabled = on;
    $("classify").setAttribute("aria-busy", on ? "true" : "false");
    $("busy").textContent = on ? "Classifying…" : "";
  }

  function classify(event) {
    if (event) event.preventDefault();
    if (busy) return;
    hideError();
    setBusy(true);
    var paper = { title: $("title").value, abstract: $("abstract").value };
    var payload = {
      papers: [paper],
      top_k: Math.min(TOP_K, limits.max_top_k || TOP_K)
    };
    if ($("explain").checked) payload.explain = true;  // absent: the answer is as before
    if (crossLists) payload.cross_lists = true;  // only a model with a head can answer them
    fetch("v1/classify", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(payload)
    })
      .then(function (response) {
        return response.text().then(function (text) {
          var body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = text ? { detail: text } : null; }
          if (!response.ok) {
            showHttpError(response, body);
            return;
          }
          if (!body || !Array.isArray(body.results) || !body.results.length) {
            showError("Unexpected answer from the server", ["The response had no results."]);
            return;
          }
          renderResult(body, paper);
        });
      })
      .catch(function (err) {
        showError("Could not reach the server", [
          String((err && err.message) || err),
          "Check that `paperops serve` is running and try again."
        ]);
      })
      .then(function () { setBusy(false); });
  }

  function renderResult(body, paper) {
    var r = body.results[0];
    renderExplanation(r.explanation, paper);
    var coverage = typeof body.coverage_target === "number" ? body.coverage_target : null;
    var coverageText = coverage === null ? null : Math.round(coverage * 1000) / 10 + "%";

    $("verdict-name").textContent = r.name || r.label;
    $("verdict-code").textContent = r.label;
    $("verdict-pct").textContent = pct(r.confidence);
    // A category model also answers the archive (its categories' summed probability).
    var arch = r.archive && r.archive.label !== r.label ? r.archive : null;
    $("verdict-archive").hidden = !arch;
    $("verdict-archive").textContent = arch
      ? "in " + (arch.name || arch.label) + " (" + arch.label + ", " + pct(arch.probability) + ")"
      : "";
    renderCrossLists(r);

    var list = $("top-list");
    list.textContent = "";
    (r.top || []).forEach(function (s) {
      var item = el("li", "bar-row");
      item.setAttribute("data-label", s.label);
      var head = el("div", "bar-head");
      var name = el("span", "bar-name", s.name || s.label);
      var code = el("span", "code", s.label);
      var value = el("span", "bar-pct", pct(s.probability));
      head.appendChild(name);
      head.appendChild(code);
      head.appendChild(value);
      var track = el("div", "bar-track");
      track.setAttribute("role", "meter");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "1");
      track.setAttribute("aria-valuenow", String(s.probability));
      track.setAttribute("aria-label", (s.name || s.label) + " probability");
      var fill = el("div", "bar-fill");
      fill.style.width = Math.max(0, Math.min(100, Number(s.probability) * 100)) + "%";
      fill.setAttribute("data-probability", String(s.probability));
      track.appendChild(fill);
      item.appendChild(head);
      item.appendChild(track);
      list.appendChild(item);
    });

    $("coverage-note").textContent = coverageText ? "(" + coverageText + " coverage)" : "";
    var chips = $("pset");
    chips.textContent = "";
    var set = r.prediction_set || [];
    set.forEach(function (s) {
      var chip = el("span", "chip");
      chip.setAttribute("data-label", s.label);
      chip.appendChild(el("span", "chip-name", s.name || s.label));
      chip.appendChild(el("span", "chip-pct", pct(s.probability)));
      chips.appendChild(chip);
    });
    var note = $("pset-note");
    note.classList.toggle("empty-set", set.length === 0);
    if (set.length === 0) {
      note.textContent = (coverageText
        ? "No confident label at " + coverageText + " coverage"
        : "No confident label") + " (the conformal prediction set is empty).";
    } else if (coverageText) {
      note.textContent = "Sets like this one contain the true archive for about " + coverageText +
        " of papers" + (set.length === 1 ? "; a single label means the model is confident." : ".");
    } else {
      note.textContent = "This model is not calibrated: the set is its top label only.";
    }

    var meta = ["Model: " + describeModel(body.model)];
    if (body.request_id) meta.push("request " + body.request_id);
    $("result-meta").textContent = meta.join(" · ");
    if (body.model && body.model.name) $("model-info").textContent = "Model: " + describeModel(body.model);
    $("result").hidden = false;
  }

  /* Also list in: the head's categories besides the primary label, most probable first. Each
   * is a per-category probability (one yes/no question per category), so they need not sum to
   * 1. Hidden when the answer has no `cross_lists` (not asked for, or an older server). */
  function renderCrossLists(r) {
    var section = $("xl");
    var chips = $("xl-chips");
    chips.textContent = "";
    if (!r || !Array.isArray(r.cross_lists)) {
      section.hidden = true;
      return;
    }
    r.cross_lists.forEach(function (s) {
      var chip = el("span", "chip chip-xl");
      chip.setAttribute("role", "listitem");
      chip.setAttribute("data-label", s.label);
      if (s.archive) chip.title = "archive " + s.archive;
      chip.appendChild(el("span", "chip-name", s.name || s.label));
      chip.appendChild(el("span", "code", s.label));
      chip.appendChild(el("span", "chip-pct", pct(s.probability)));
      chips.appendChild(chip);
    });
    var precision = crossLists && typeof crossLists.precision === "number" &&
      isFinite(crossLists.precision) ? Math.round(crossLists.precision * 100) + "%" : null;
    var note = $("xl-note");
    note.classList.toggle("empty-xl", r.cross_lists.length === 0);
    note.textContent = r.cross_lists.length === 0
      ? "No other category passed its threshold: the primary category " + (r.label || "") +
        " is the only suggestion."
      : "Each category is judged on its own (per-category probabilities: they do not sum to 1)" +
        (precision ? "; thresholds aim at about " + precision + " precision." : ".");
    section.hidden = false;
  }

  /* --- explanation: the sent title and abstract with the explained terms highlighted ------ */

  var WHY_METHOD = {
    linear: "exact contributions of words and word pairs to the score of ",
    occlusion: "how much removing each part lowers the probability of "
  };

  /* Per character: the largest weight of a term covering it (a word inside a highlighted pair
   * keeps the stronger colour); then runs of equal weight become one <mark>. */
  function highlight(node, text, terms, field, maxWeight) {
    var weight = new Array(text.length).fill(0);
    terms.forEach(function (t) {
      (t.spans || []).forEach(function (s) {
        if (s.field !== field) return;
        for (var i = Math.max(0, s.start); i < Math.min(text.length, s.end); i++) {
          if (t.weight > weight[i]) weight[i] = t.weight;
        }
      });
    });
    node.textContent = "";
    var i = 0;
    while (i < text.length) {
      var j = i;
      while (j < text.length && weight[j] === weight[i]) j++;
      var piece = text.slice(i, j);
      if (weight[i] > 0) {
        var mark = el("mark", null, piece);
        mark.setAttribute("data-weight", String(weight[i]));
        mark.style.setProperty("--w", (0.15 + 0.75 * weight[i] / maxWeight).toFixed(3));
        mark.title = "weight " + weight[i];
        node.appendChild(mark);
      } else {
        node.appendChild(document.createTextNode(piece));
      }
      i = j;
    }
  }

  function renderExplanation(e, paper) {
    var why = $("why");
    if (!e || !paper) {
      why.hidden = true;
      return;
    }
    var terms = (e.terms || []).filter(function (t) { return Number(t.weight) > 0; });
    var maxWeight = terms.reduce(function (m, t) { return Math.max(m, Number(t.weight)); }, 0) || 1;
    $("why-method").textContent = "(" + (WHY_METHOD[e.method] || e.method + ": ") + e.label + ")";
    var note = $("why-note");
    note.classList.toggle("empty-why", terms.length === 0);
    note.textContent = terms.length ? "Stronger colour: pushed the answer more." : (e.reason || "Nothing to highlight.");
    highlight($("why-title"), paper.title, terms, "title", maxWeight);
    highlight($("why-abstract"), paper.abstract, terms, "abstract", maxWeight);
    var list = $("why-terms");
    list.textContent = "";
    terms.forEach(function (t) {
      var item = el("li", null, t.text);
      item.setAttribute("data-weight", String(t.weight));
      var w = Number(t.weight);
      item.appendChild(el("span", "why-weight", e.method === "occlusion" ? "−" + pct(w) : "+" + w.toFixed(3)));
      list.appendChild(item);
    });
    why.hidden = false;
  }

  function clearForm() {
    $("title").value = "";
    $("abstract").value = "";
    $("example").value = "";
    $("result").hidden = true;
    hideError();
    updateCounters();
    $("title").focus();
  }

  /* --- generate text ---------------------------------------------------------------------- */

  var GEN_FIELDS = [  // [input id, API field, integer?]
    ["gen-max-new-tokens", "max_new_tokens", true],
    ["gen-temperature", "temperature", false],
    ["gen-top-p", "top_p", false],
    ["gen-top-k", "top_k", true],
    ["gen-seed", "seed", true]
  ];
  var FINISH_MEANING = {
    eos: "the model ended the text",
    length: "reached max new tokens",
    context: "reached the model's context length",
    time_budget: "reached the server's time budget",
    stopped: "stopped by you"
  };
  var gen = {
    available: false,   // set from v1/model's `generator`
    promptMaxChars: null,
    controller: null,   // AbortController of the request in flight
    textNode: null,
    tokens: 0,
    started: 0,
    firstTokenAt: 0,
    prompts: [],
    corpus: null
  };

  function firstNumber(obj, keys) {
    for (var i = 0; i < keys.length; i++) {
      var v = obj && obj[keys[i]];
      if (typeof v === "number" && isFinite(v)) return v;
    }
    return null;
  }

  /* `g`: v1/model's generator entry; null = no language model; undefined = unknown (v1/model
   * failed: the Generate button stays usable and the server says what is wrong). */
  function setGenerator(g, body) {
    var info = $("gen-model-info");
    if (g === null) {
      gen.available = false;
      $("gen-unavailable").hidden = false;
      $("generate").disabled = true;
      $("generate").title = "No language model is loaded";
      info.textContent = "No language model is loaded.";
      return;
    }
    gen.available = true;
    $("gen-unavailable").hidden = true;
    $("generate").disabled = false;
    $("generate").removeAttribute("title");
    if (!g || typeof g !== "object") {
      info.textContent = "Language model details unavailable";
      return;
    }
    var limitsIn = Object.assign({}, (body && body.limits) || {}, g.limits || {});
    var cap = firstNumber(g, ["max_new_tokens_cap", "max_new_tokens", "cap"]) ||
      firstNumber(limitsIn, ["max_new_tokens_cap", "max_new_tokens"]);
    var context = firstNumber(g, ["context_length", "context"]);
    var preset = firstNumber(g, ["default_max_new_tokens"]) ||
      firstNumber(limitsIn, ["default_max_new_tokens"]);
    gen.promptMaxChars = firstNumber(g, ["prompt_max_chars"]) ||
      firstNumber(limitsIn, ["prompt_max_chars"]);
    var input = $("gen-max-new-tokens");
    if (cap && cap >= 1) {
      input.max = String(cap);
      $("gen-max-new-tokens-hint").textContent = "1 – " + cap.toLocaleString("en-US");
      if (Number(input.value) > cap) input.value = String(cap);
    }
    if (preset && preset >= 1) input.value = String(cap ? Math.min(preset, cap) : preset);
    $("gen-context-hint").textContent = context
      ? "The model reads at most " + context.toLocaleString("en-US") +
        " tokens: prompt and generated text together."
      : "";
    gen.corpus = g.corpus || null;
    var parts = ["Language model: " + describeModel(g)];
    if (context) parts.push("context " + context.toLocaleString("en-US") + " tokens");
    if (g.corpus) parts.push("trained on " + g.corpus);
    info.textContent = parts.join(" · ");
    updatePromptCounter();
    sortPrompts();
  }

  function updatePromptCounter() {
    var n = $("gen-prompt").value.length;
    var max = gen.promptMaxChars;
    var counter = $("gen-prompt-count");
    counter.textContent = n.toLocaleString("en-US") +
      (max ? " / " + Number(max).toLocaleString("en-US") : " characters");
    var over = !!max && n > max;
    counter.classList.toggle("over", over);
    $("gen-prompt").setAttribute("aria-invalid", over ? "true" : "false");
  }

  function loadPrompts() {
    return fetch("static/prompts.json")
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (list) {
        gen.prompts = Array.isArray(list) ? list : [];
        sortPrompts();
      })
      .catch(function () { $("gen-example").disabled = true; });
  }

  /* Examples from the generator's corpus first (medical questions or arXiv abstracts). */
  function sortPrompts() {
    var select = $("gen-example");
    while (select.options.length > 1) select.remove(1);
    var order = gen.prompts.map(function (p, i) { return i; });
    if (gen.corpus) {
      order.sort(function (a, b) {
        var ma = gen.prompts[a].corpus === gen.corpus ? 0 : 1;
        var mb = gen.prompts[b].corpus === gen.corpus ? 0 : 1;
        return ma - mb || a - b;
      });
    }
    order.forEach(function (i) {
      var opt = el("option", null, gen.prompts[i].label || gen.prompts[i].prompt);
      opt.value = String(i);
      select.appendChild(opt);
    });
  }

  function pickPrompt() {
    var value = $("gen-example").value;
    var p = gen.prompts[Number(value)];
    if (!p || value === "") return;
    $("gen-prompt").value = p.prompt;
    updatePromptCounter();
    hideGenError();
  }

  function hideGenError() {
    $("gen-error").hidden = true;
    $("gen-error-list").textContent = "";
    GEN_FIELDS.concat([["gen-prompt", "prompt"]]).forEach(function (f) {
      $(f[0]).removeAttribute("aria-invalid");
    });
  }

  function showGenError(title, lines, fields) {
    $("gen-error-title").textContent = title;
    var list = $("gen-error-list");
    list.textContent = "";
    (lines || []).forEach(function (line) { list.appendChild(el("li", null, line)); });
    (fields || []).forEach(function (name) {
      var match = GEN_FIELDS.concat([["gen-prompt", "prompt"]]).filter(function (f) {
        return f[1] === name;
      })[0];
      if (match) $(match[0]).setAttribute("aria-invalid", "true");
    });
    $("gen-error").hidden = false;
  }

  function showGenHttpError(response, body) {
    var meaning = STATUS_MEANING[response.status] || response.statusText || "Error";
    var detail = body && (body.detail !== undefined ? body.detail : body.error);
    var lines = ruleLines(detail);
    if (!lines.length && body && (body.error || body.message)) {
      lines = [String(body.error || body.message)];
    }
    var fields = Array.isArray(detail)
      ? detail.map(function (d) { return d && fieldName(d.loc); }) : [];
    var retry = response.headers.get("Retry-After");
    if (retry) lines.push("Retry after " + retry + " s.");
    showGenError(meaning + " (HTTP " + response.status + ")", lines, fields);
    $("gen-result").hidden = true;
  }

  /* The request body from the inputs; blank inputs are left out (the server's defaults). */
  function generatePayload() {
    var payload = { prompt: $("gen-prompt").value };
    var problems = [];
    GEN_FIELDS.forEach(function (f) {
      var input = $(f[0]);
      if (input.validity && input.validity.badInput) {
        problems.push(f[1]);
        return;
      }
      if (input.value.trim() === "") return;
      var v = Number(input.value);
      payload[f[1]] = v;
    });
    return { payload: payload, problems: problems };
  }

  function setGenBusy(on) {
    $("generate").disabled = on || !gen.available;
    $("generate").setAttribute("aria-busy", on ? "true" : "false");
    $("stop").disabled = !on;
    $("gen-busy").textContent = on ? "Generating…" : "";
    $("gen-output").setAttribute("aria-busy", on ? "true" : "false");
    $("gen-output").classList.toggle("streaming", on);
  }

  function fmt(n, digits) {
    var v = Number(n);
    return isFinite(v) ? v.toLocaleString("en-US", {
      minimumFractionDigits: digits, maximumFractionDigits: digits
    }) : "–";
  }

  function renderGenMeta(m) {
    $("gen-finish").textContent = m.finish_reason +
      (FINISH_MEANING[m.finish_reason] ? " (" + FINISH_MEANING[m.finish_reason] + ")" : "");
    $("gen-finish").setAttribute("data-reason", m.finish_reason);
    var t = m.tokens || {};
    $("gen-tokens").textContent = fmt(t.generated, 0) + " generated" +
      (t.prompt !== undefined ? " · " + fmt(t.prompt, 0) + " in the prompt" : "");
    $("gen-tokens").setAttribute("data-generated", String(t.generated));
    var timing = m.timing || {};
    $("gen-ttft").textContent = timing.ttft_ms !== undefined ? fmt(timing.ttft_ms, 0) + " ms" : "–";
    $("gen-rate").textContent = timing.tokens_per_s !== undefined
      ? fmt(timing.tokens_per_s, 1) + " tokens/s" : "–";
    var seed = m.seed === undefined || m.seed === null ? "" : String(m.seed);
    $("gen-seed-used").textContent = seed || "–";
    $("gen-reuse-seed").hidden = !seed;
    $("gen-model").textContent = m.model ? describeModel(m.model) +
      (m.id ? " · request " + m.id : "") : "–";
    $("gen-meta").hidden = false;
  }

  /* One SSE frame ("event: x\ndata: {...}") -> {event, data}; comments and ids are ignored. */
  function parseFrame(frame) {
    var event = "message";
    var data = [];
    frame.split(/\r\n|\r|\n/).forEach(function (line) {
      if (!line || line.charAt(0) === ":") return;
      var colon = line.indexOf(":");
      var key = colon < 0 ? line : line.slice(0, colon);
      var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (key === "event") event = value;
      else if (key === "data") data.push(value);
    });
    return data.length ? { event: event, data: data.join("\n") } : null;
  }

  function onGenEvent(ev) {
    var body;
    try { body = JSON.parse(ev.data); } catch (e) { body = { detail: ev.data }; }
    if (ev.event === "token") {
      if (!gen.tokens) gen.firstTokenAt = performance.now();
      gen.tokens += 1;
      if (body && typeof body.text === "string" && body.text) gen.textNode.appendData(body.text);
      $("gen-busy").textContent = "Generating… " + gen.tokens + " tokens";
      return "token";
    }
    if (ev.event === "done") {
      if (body && typeof body.text === "string") gen.textNode.data = body.text;  // authoritative
      renderGenMeta(body || {});
      return "done";
    }
    if (ev.event === "error") {
      showGenError("Generation failed", ruleLines(body && body.detail !== undefined
        ? body.detail : body));
      return "error";
    }
    return "other";
  }

  function readStream(response) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder("utf-8");
    var buffer = "";
    var finished = false;
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) {
          buffer += decoder.decode();
          if (buffer.trim()) {
            var last = parseFrame(buffer);
            if (last && onGenEvent(last) !== "token") finished = true;
          }
          if (!finished) {
            showGenError("The stream ended early", [
              "The server closed the connection before the generation finished.",
              "The text above is what arrived."
            ]);
          }
          return;
        }
        buffer += decoder.decode(chunk.value, { stream: true });
        var frames = buffer.split(/\r\n\r\n|\n\n|\r\r/);
        buffer = frames.pop();
        frames.forEach(function (frame) {
          var ev = parseFrame(frame);
          if (!ev) return;
          var kind = onGenEvent(ev);
          if (kind === "done" || kind === "error") finished = true;
        });
        return pump();
      });
    }
    return pump();
  }

  function startGenerate(event) {
    if (event) event.preventDefault();
    if (gen.controller || !gen.available) return;
    hideGenError();
    var built = generatePayload();
    if (built.problems.length) {
      showGenError("Invalid input", built.problems.map(function (f) {
        return f + ": not a number (number_parsing)";
      }), built.problems);
      return;
    }
    gen.controller = new AbortController();
    gen.tokens = 0;
    gen.started = performance.now();
    gen.firstTokenAt = 0;
    $("gen-echo").textContent = built.payload.prompt;
    $("gen-text").textContent = "";
    gen.textNode = document.createTextNode("");
    $("gen-text").appendChild(gen.textNode);
    $("gen-meta").hidden = true;
    setGenBusy(true);
    var controller = gen.controller;
    fetch("v1/generate?stream=true", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(built.payload),
      signal: controller.signal
    })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (!response.ok || type.indexOf("text/event-stream") < 0) {
          return response.text().then(function (text) {
            var body = null;
            try { body = text ? JSON.parse(text) : null; } catch (e) { body = text ? { detail: text } : null; }
            if (!response.ok) {
              showGenHttpError(response, body);
            } else if (body && typeof body.text === "string") {  // a server without streaming
              gen.textNode.data = body.text;
              $("gen-result").hidden = false;
              renderGenMeta(body);
            } else {
              showGenError("Unexpected answer from the server", ["The response had no text."]);
            }
          });
        }
        $("gen-result").hidden = false;
        return readStream(response);
      })
      .catch(function (err) {
        if (controller.signal.aborted) {  // Stop: the server sees the disconnect and stops too
          var elapsed = (performance.now() - gen.started) / 1000;
          var gotSeed = $("gen-seed").value.trim();
          renderGenMeta({
            finish_reason: "stopped",
            tokens: { generated: gen.tokens },
            timing: {
              ttft_ms: gen.firstTokenAt ? gen.firstTokenAt - gen.started : undefined,
              tokens_per_s: elapsed > 0 ? gen.tokens / elapsed : undefined
            },
            seed: gotSeed === "" ? null : Number(gotSeed)
          });
          $("gen-result").hidden = false;
          return;
        }
        showGenError("Could not reach the server", [
          String((err && err.message) || err),
          "Check that `paperops serve` is running and try again."
        ]);
      })
      .then(function () {
        gen.controller = null;
        setGenBusy(false);
      });
  }

  function stopGenerate() {
    if (gen.controller) gen.controller.abort();
  }

  function reuseSeed() {
    var seed = $("gen-seed-used").textContent;
    if (/^-?\d+$/.test(seed)) {
      $("gen-seed").value = seed;
      $("gen-seed").focus();
    }
  }

  function initGenerate() {
    if (!$("generate-form")) return;
    $("generate").disabled = true;  // until v1/model says whether a language model is loaded
    updatePromptCounter();
    $("gen-prompt").addEventListener("input", updatePromptCounter);
    $("gen-example").addEventListener("change", pickPrompt);
    $("generate-form").addEventListener("submit", startGenerate);
    $("stop").addEventListener("click", stopGenerate);
    $("gen-reuse-seed").addEventListener("click", reuseSeed);
    $("generate-form").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) startGenerate(e);
    });
    loadPrompts();
  }

  function init() {
    setupTabs();
    updateCounters();
    $("title").addEventListener("input", function () { updateCounter("title"); });
    $("abstract").addEventListener("input", function () { updateCounter("abstract"); });
    $("example").addEventListener("change", pickExample);
    $("classify-form").addEventListener("submit", classify);
    $("clear").addEventListener("click", clearForm);
    $("classify-form").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classify(e);
    });
    initGenerate();
    loadModel();
    loadExamples();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
