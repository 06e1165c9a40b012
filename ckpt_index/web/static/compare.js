// The Compare page's chart: fetches the curves of the compared checkpoints' experiments from
// /api/compare/curves (the URL in #compare-chart's data-src), fills the metric chooser with the
// metrics they share, and draws one uPlot series per experiment with a ring on each compared
// checkpoint. Names from files reach the page as text only (textContent, canvas text).
// Live: the compared checkpoints are fixed by the URL, but their experiments' curves grow while
// training runs; on "ckpt-index:changed" (live.js) the curves are fetched again for the metric
// shown and redrawn in place on the same x axis.
"use strict";
(() => {
  const PALETTE = ["#2f6fdf", "#d6336c", "#2b8a3e", "#e67700", "#7048e8", "#0c8599"];
  // Epochs and steps are whole numbers: ticks 1, 2, 5, 10, 20, 50... apart, never 0.5.
  const WHOLE = [1, 2, 5].flatMap((d) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7].map((p) => d * p))
    .sort((a, b) => a - b);
  let answer = null;
  let plot = null;
  let busy = false;
  let again = false; // a change announced while a refresh was under way

  const holder = () => document.getElementById("compare-chart");

  function note(text) {
    const element = document.getElementById("curve-note");
    if (element) element.textContent = text;
  }

  function fillChooser(data) {
    const select = document.getElementById("curve-metric");
    if (!select) return;
    select.textContent = "";
    for (const name of data.metrics) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === data.metric;
      select.appendChild(option);
    }
    select.disabled = data.metrics.length === 0;
  }

  function markList(data) {
    const list = document.getElementById("curve-marks");
    if (!list) return;
    list.textContent = "";
    data.marks.forEach((mark, i) => {
      const item = document.createElement("li");
      const value = mark.value === null ? "no value" : String(mark.value);
      item.textContent = `${mark.exp_name ?? "(no experiment)"} · epoch ${mark.epoch ?? "?"} · ${value} · ${mark.path}`;
      item.dataset.index = String(i + 1);
      list.appendChild(item);
    });
  }

  function draw() {
    const box = holder();
    if (!box || !answer || typeof uPlot === "undefined") return;
    const data = answer;
    const xSelect = document.getElementById("curve-x");
    const xName = xSelect ? xSelect.value : "epoch";
    const colour = new Map(data.series.map((s, i) => [s.exp_name, PALETTE[i % PALETTE.length]]));
    const xs = new Set();
    for (const s of data.series) s[xName].forEach((x) => x !== null && xs.add(x));
    const marks = data.marks.filter((m) => m[xName] !== null && m.value !== null);
    for (const m of marks) xs.add(m[xName]);
    const xAxis = Array.from(xs).sort((a, b) => a - b);
    const where = new Map(xAxis.map((x, i) => [x, i]));
    const columns = data.series.map((s) => {
      const ys = new Array(xAxis.length).fill(null);
      s[xName].forEach((x, i) => { if (x !== null) ys[where.get(x)] = s.value[i]; });
      return ys;
    });
    if (plot) plot.destroy();
    box.textContent = "";
    let drawn = 0;
    const ring = (u) => {
      const ctx = u.ctx;
      const ratio = window.devicePixelRatio || 1;
      drawn = 0;
      ctx.save();
      marks.forEach((m) => {
        const cx = u.valToPos(m[xName], "x", true);
        const cy = u.valToPos(m.value, "y", true);
        ctx.beginPath();
        ctx.lineWidth = 2.5 * ratio;
        ctx.strokeStyle = colour.get(m.exp_name) || "#1d2330";
        ctx.arc(cx, cy, 8 * ratio, 0, 2 * Math.PI);
        ctx.stroke();
        ctx.fillStyle = "#1d2330";
        ctx.font = `${11 * ratio}px system-ui, sans-serif`;
        ctx.fillText(String(data.marks.indexOf(m) + 1), cx + 10 * ratio, cy - 8 * ratio);
        drawn += 1;
      });
      ctx.restore();
      box.dataset.marks = String(drawn);
    };
    const opts = {
      width: Math.max(320, Math.min(1100, box.clientWidth || 720)),
      height: 320,
      scales: { x: { time: false } },
      axes: [{ label: xName, incrs: WHOLE }, { label: data.metric }],
      series: [
        { label: xName },
        ...data.series.map((s) => ({
          label: s.exp_name,
          stroke: colour.get(s.exp_name),
          width: 2,
          spanGaps: true,
          points: { show: true, size: 6 },
        })),
      ],
      hooks: { draw: [ring] },
    };
    plot = new uPlot(opts, [xAxis, ...columns], box);
    window.ckptComparePlot = plot;
    box.dataset.series = String(data.series.length);
    box.dataset.points = String(xAxis.length); // the x values drawn
    box.dataset.x = xName;
    box.dataset.metric = data.metric;
  }

  async function read(metric) {
    const url = new URL(holder().dataset.src, window.location.href);
    if (metric) url.searchParams.set("metric", metric);
    return fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
  }

  // The index changed: the same checkpoints' curves again, for the metric shown.
  async function refresh() {
    const box = holder();
    if (!box || box.dataset.ready !== "1") return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    again = false;
    try {
      const reply = await read(answer ? answer.metric : box.dataset.metric);
      if (!reply.ok) return; // e.g. a compared checkpoint left the index: keep what is shown
      const data = await reply.json();
      fillChooser(data);
      markList(data);
      if (data.metric) {
        answer = data;
        note("Each experiment’s curve; a ring marks each compared checkpoint.");
        draw();
      }
      box.dataset.refreshed = String(Number(box.dataset.refreshed || "0") + 1);
    } catch (_error) {
      // The server is away: the next change tries again.
    } finally {
      busy = false;
    }
    if (again) refresh();
  }

  async function start() {
    const box = holder();
    if (!box) return;
    const select = document.getElementById("curve-metric");
    if (select) select.addEventListener("change", () => select.form.submit());
    const xSelect = document.getElementById("curve-x");
    if (xSelect) xSelect.addEventListener("change", draw);
    document.addEventListener("ckpt-index:changed", refresh);
    const reply = await read(box.dataset.metric);
    if (!reply.ok) {
      note(`The curves could not be read (HTTP ${reply.status}).`);
      return;
    }
    const data = await reply.json();
    fillChooser(data);
    markList(data);
    if (!data.metric) {
      note("The compared checkpoints’ experiments share no metric.");
      box.dataset.series = "0";
      box.dataset.ready = "1";
      return;
    }
    answer = data;
    draw();
    box.dataset.ready = "1";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
