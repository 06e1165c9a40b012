// The Experiment page's metric curve: reads #experiment-data (a JSON block, not executed) and
// draws it with uPlot (static/vendor). Sets data-points on #chart to the number drawn.
// Live: on "ckpt-index:changed" (live.js, when the index changed) it fetches the experiment's
// JSON for the metric shown and redraws the chart in place (same metric and x axis), the summary
// with the best checkpoint, the checkpoints table and the parameters. Values from files reach
// the page as text only (textContent, attributes, canvas text).
(function () {
  "use strict";
  // Epochs and steps are whole numbers: ticks 1, 2, 5, 10, 20, 50... apart, never 0.5.
  var WHOLE = [1, 2, 5].reduce(function (all, d) {
    return all.concat([1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7].map(function (p) { return d * p; }));
  }, []).sort(function (a, b) { return a - b; });
  var data = null; // {metric, mode, best_path, epoch, global_step, value, path}
  var plot = null;
  var busy = false;
  var again = false; // a change announced while a refresh was under way

  function columns(xName) {
    var xs = [], ys = [], best = [];
    var order = (data[xName] || []).map(function (x, i) { return i; })
      .filter(function (i) { return data[xName][i] !== null && data[xName][i] !== undefined; })
      .sort(function (a, b) { return data[xName][a] - data[xName][b]; });
    order.forEach(function (i) {
      xs.push(data[xName][i]);
      ys.push(data.value[i]);
      best.push(data.path[i] === data.best_path ? data.value[i] : null);
    });
    return [xs, ys, best];
  }

  // Draws the chart; with `keep`, the same metric and axis on the plot already there get the
  // new points (uPlot's setData), so the chart is not rebuilt.
  function draw(keep) {
    var holder = document.getElementById("chart");
    if (!data || !holder || typeof uPlot === "undefined") return;
    var xSelect = document.getElementById("x-select");
    var xName = xSelect ? xSelect.value : "epoch";
    var cols = columns(xName);
    if (keep && plot && holder.dataset.x === xName && holder.dataset.metric === (data.metric || "")) {
      plot.setData(cols);
    } else {
      if (plot) plot.destroy();
      holder.textContent = "";
      var width = Math.max(320, Math.min(900, holder.clientWidth || 720));
      var opts = {
        width: width,
        height: 320,
        scales: { x: { time: false } },
        axes: [{ label: xName, incrs: WHOLE }, { label: data.metric || "" }],
        series: [
          { label: xName },
          { label: data.metric || "value", stroke: "#2f6fdf", width: 2, points: { show: true, size: 6 } },
          { label: "best", stroke: "#d6336c", width: 0, points: { show: true, size: 12, fill: "#d6336c" } },
        ],
      };
      plot = new uPlot(opts, cols, holder);
    }
    holder.dataset.points = String(cols[0].length);
    holder.dataset.metric = data.metric || "";
    holder.dataset.x = xName;
    window.ckptExperimentPlot = plot;
  }

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function checkpointHref(path) {
    return "/checkpoint?" + new URLSearchParams({ path: path }).toString();
  }

  function summary(exp) {
    var element = document.getElementById("experiment-summary");
    if (!element) return;
    var n = exp.checkpoints.length;
    element.textContent = n + " checkpoint" + (n === 1 ? "" : "s") + " ";
    if (exp.best_path) {
      element.appendChild(document.createTextNode("· best by " + exp.metric + " (" + exp.mode + "): "));
      var best = link(checkpointHref(exp.best_path), exp.best_path);
      best.id = "best-link";
      element.appendChild(best);
    }
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    row.appendChild(td);
    return td;
  }

  function table(exp) {
    var body = document.querySelector("#experiment-checkpoints tbody");
    if (!body) return;
    var rows = exp.checkpoints.map(function (r) {
      var row = document.createElement("tr");
      row.dataset.path = r.checkpoint_path;
      var isBest = r.checkpoint_path === exp.best_path;
      if (isBest) row.className = "best";
      var first = cell(row, "");
      first.className = "path";
      first.appendChild(link(checkpointHref(r.checkpoint_path), r.checkpoint_path));
      if (isBest) {
        var badge = document.createElement("span");
        badge.className = "badge";
        badge.title = "best";
        badge.textContent = "★ best";
        first.appendChild(document.createTextNode(" "));
        first.appendChild(badge);
      }
      cell(row, r.epoch);
      cell(row, r.global_step);
      var value = exp.metric ? r.metrics[exp.metric] : null;
      if ((value === null || value === undefined) && exp.metric) value = r[exp.metric];
      cell(row, value);
      cell(row, r.status);
      return row;
    });
    body.replaceChildren.apply(body, rows);
  }

  function params(id, entries, shown) {
    var body = document.querySelector("#" + id + " tbody");
    if (!body) return;
    var rows = entries.map(function (entry) {
      var row = document.createElement("tr");
      row.dataset.name = entry[0];
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = entry[0];
      row.appendChild(th);
      cell(row, shown(entry[1]));
      return row;
    });
    if (rows.length === 0) {
      var empty = document.createElement("tr");
      cell(empty, "None.").className = "empty";
      rows.push(empty);
    }
    body.replaceChildren.apply(body, rows);
    var heading = document.getElementById(id + "-count");
    if (heading) heading.textContent = String(entries.length);
  }

  function metricChoice(exp) {
    var select = document.getElementById("metric-select");
    if (!select) return;
    var have = Array.from(select.options).map(function (o) { return o.value; });
    if (have.join("\n") === exp.metrics.join("\n")) return;
    select.replaceChildren.apply(select, exp.metrics.map(function (name) {
      var option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === exp.metric;
      return option;
    }));
  }

  async function refresh() {
    var api = document.getElementById("api-link");
    var holder = document.getElementById("chart");
    if (!api || !holder) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    again = false;
    try {
      var url = new URL(api.getAttribute("href"), window.location.href);
      if (data && data.metric) url.searchParams.set("metric", data.metric);
      var reply = await fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
      if (!reply.ok) return; // gone or unreadable for now: the page keeps what it shows
      var exp = await reply.json();
      data = Object.assign({ metric: exp.metric, mode: exp.mode, best_path: exp.best_path }, exp.curve);
      draw(true);
      summary(exp);
      table(exp);
      metricChoice(exp);
      params("params-shared", Object.entries(exp.params.shared), function (v) { return JSON.stringify(v); });
      params("params-varying", Object.entries(exp.params.varying), function (vs) {
        return vs.map(function (v) { return JSON.stringify(v); }).join(", ");
      });
      holder.dataset.refreshed = String(Number(holder.dataset.refreshed || "0") + 1);
    } catch (_error) {
      // The server is away: the next change tries again.
    } finally {
      busy = false;
    }
    if (again) refresh();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var block = document.getElementById("experiment-data");
    if (block) data = JSON.parse(block.textContent || "{}");
    draw(false);
    var xSelect = document.getElementById("x-select");
    if (xSelect) xSelect.addEventListener("change", function () { draw(false); });
    var metric = document.getElementById("metric-select");
    if (metric && metric.form) metric.addEventListener("change", function () { metric.form.submit(); });
    document.addEventListener("ckpt-index:changed", refresh);
  });
})();
