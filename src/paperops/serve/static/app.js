/* paperops web page: plain JavaScript, no build step, no external resources (works offline).
 *
 * Talks to the same API as every other client: GET v1/model (name, version, limits),
 * POST v1/classify. URLs are relative so the page also works behind a path prefix.
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
      })
      .catch(function () {
        $("model-info").textContent = "Model details unavailable";
        $("model-info").classList.add("muted");
      });
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
    var payload = {
      papers: [{ title: $("title").value, abstract: $("abstract").value }],
      top_k: Math.min(TOP_K, limits.max_top_k || TOP_K)
    };
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
          renderResult(body);
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

  function renderResult(body) {
    var r = body.results[0];
    var coverage = typeof body.coverage_target === "number" ? body.coverage_target : null;
    var coverageText = coverage === null ? null : Math.round(coverage * 1000) / 10 + "%";

    $("verdict-name").textContent = r.name || r.label;
    $("verdict-code").textContent = r.label;
    $("verdict-pct").textContent = pct(r.confidence);

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

  function clearForm() {
    $("title").value = "";
    $("abstract").value = "";
    $("example").value = "";
    $("result").hidden = true;
    hideError();
    updateCounters();
    $("title").focus();
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
    loadModel();
    loadExamples();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
