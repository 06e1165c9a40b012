// The Experiment page's metric curve: reads #experiment-data (a JSON block, not executed) and
// draws it with uPlot (static/vendor). Sets data-points on #chart to the number drawn.
(function () {
  "use strict";
  // Epochs and steps are whole numbers: ticks 1, 2, 5, 10, 20, 50... apart, never 0.5.
  var WHOLE = [1, 2, 5].reduce(function (all, d) {
    return all.concat([1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7].map(function (p) { return d * p; }));
  }, []).sort(function (a, b) { return a - b; });
  function draw() {
    var block = document.getElementById("experiment-data");
    var holder = document.getElementById("chart");
    if (!block || !holder || typeof uPlot === "undefined") return;
    var data = JSON.parse(block.textContent || "{}");
    var xSelect = document.getElementById("x-select");
    var xName = xSelect ? xSelect.value : "epoch";
    var xs = [], ys = [], best = [];
    var order = (data[xName] || []).map(function (x, i) { return i; })
      .filter(function (i) { return data[xName][i] !== null && data[xName][i] !== undefined; })
      .sort(function (a, b) { return data[xName][a] - data[xName][b]; });
    order.forEach(function (i) {
      xs.push(data[xName][i]);
      ys.push(data.value[i]);
      best.push(data.path[i] === data.best_path ? data.value[i] : null);
    });
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
    var plot = new uPlot(opts, [xs, ys, best], holder);
    holder.dataset.points = String(xs.length);
    holder.dataset.metric = data.metric || "";
    holder.dataset.x = xName;
    window.ckptExperimentPlot = plot;
  }
  document.addEventListener("DOMContentLoaded", function () {
    draw();
    var xSelect = document.getElementById("x-select");
    if (xSelect) xSelect.addEventListener("change", draw);
    var metric = document.getElementById("metric-select");
    if (metric && metric.form) metric.addEventListener("change", function () { metric.form.submit(); });
  });
})();
