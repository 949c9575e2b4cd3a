/* EasyRLHF report.html: draws the charts (SVG) from the page's embedded data, and lets the samples table be
   filtered and sorted. Inlined into the page: no external loads, no libraries. */
(function () {
  "use strict";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
  var HEIGHT = 230, M = {left: 58, right: 14, top: 8, bottom: 26};

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return String(v);
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(6)));
  }

  function niceTicks(lo, hi, count, integer) {
    if (!(hi > lo)) { var pad = integer ? 1 : (lo === 0 ? 1 : Math.abs(lo) * 0.1); lo -= pad; hi += pad; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
    var err = (count * step) / (hi - lo);
    if (err <= 0.15) step *= 10; else if (err <= 0.35) step *= 5; else if (err <= 0.75) step *= 2;
    if (integer && step < 1) step = 1;
    var first = Math.floor(lo / step), last = Math.ceil(hi / step), ticks = [];
    for (var k = first; k <= last; k++) ticks.push(Number((k * step).toPrecision(12)));
    ticks.step = step;
    return ticks;
  }

  /* Tick labels: as many decimals as the tick step needs, exponents for very large or small values. */
  function tickFormat(ticks) {
    var step = ticks.step, big = Math.max(Math.abs(ticks[0]), Math.abs(ticks[ticks.length - 1]));
    if (big >= 1e5 || (big > 0 && big < 1e-3)) {
      var digits = Math.max(0, Math.min(8, Math.floor(Math.log10(big)) - Math.floor(Math.log10(step))));
      return function (v) { return v === 0 ? "0" : v.toExponential(digits); };
    }
    var decimals = Math.max(0, Math.min(10, -Math.floor(Math.log10(step) + 1e-9)));
    return function (v) { return v.toFixed(decimals); };
  }

  function extent(series, key) {
    var lo = Infinity, hi = -Infinity;
    series.forEach(function (s) {
      s[key].forEach(function (v) { if (v !== null && isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } });
    });
    return lo === Infinity ? [0, 1] : [lo, hi];
  }

  function nearestIndex(xs, x) {
    var lo = 0, hi = xs.length - 1;
    if (hi < 0) return -1;
    while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid; else hi = mid; }
    return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
  }

  function drawChart(box, spec) {
    var plot = box.querySelector(".plot"), legend = box.querySelector(".legend");
    var hidden = box._hidden || (box._hidden = {});
    spec.series.forEach(function (s, i) { s.color = PALETTE[i % PALETTE.length]; });
    var shown = spec.series.filter(function (s) { return !hidden[s.name]; });
    var width = Math.max(plot.clientWidth || 400, 200);
    var w = width - M.left - M.right, h = HEIGHT - M.top - M.bottom;
    var all = shown.length ? shown : spec.series;
    var integer = all.every(function (s) { return s.x.every(function (v) { return v === Math.floor(v); }); });
    var xt = niceTicks.apply(null, extent(all, "x").concat([6, integer]));
    var yt = niceTicks.apply(null, extent(all, "y").concat([5, false]));
    var fx = tickFormat(xt), fy = tickFormat(yt);
    var x0 = xt[0], x1 = xt[xt.length - 1], y0 = yt[0], y1 = yt[yt.length - 1];
    function sx(v) { return M.left + ((v - x0) / (x1 - x0 || 1)) * w; }
    function sy(v) { return M.top + h - ((v - y0) / (y1 - y0 || 1)) * h; }
    var out = ['<svg viewBox="0 0 ' + width + " " + HEIGHT + '" role="img" aria-label="' + esc(spec.title) + '">'];
    yt.forEach(function (t) {
      out.push('<line class="grid" x1="' + M.left + '" x2="' + (M.left + w) + '" y1="' + sy(t) + '" y2="' + sy(t) + '"/>');
      out.push('<text x="' + (M.left - 6) + '" y="' + (sy(t) + 3.5) + '" text-anchor="end">' + esc(fy(t)) + "</text>");
    });
    xt.forEach(function (t) {
      out.push('<line class="axis" x1="' + sx(t) + '" x2="' + sx(t) + '" y1="' + (M.top + h) + '" y2="' + (M.top + h + 4) + '"/>');
      out.push('<text x="' + sx(t) + '" y="' + (M.top + h + 16) + '" text-anchor="middle">' + esc(fx(t)) + "</text>");
    });
    out.push('<line class="axis" x1="' + M.left + '" x2="' + (M.left + w) + '" y1="' + (M.top + h) + '" y2="' + (M.top + h) + '"/>');
    out.push('<text x="' + (M.left + w) + '" y="' + (HEIGHT - 1) + '" text-anchor="end">step</text>');
    shown.forEach(function (s) {
      var d = "", pen = false;
      for (var i = 0; i < s.x.length; i++) {
        if (s.y[i] === null || !isFinite(s.y[i])) { pen = false; continue; }
        d += (pen ? "L" : "M") + sx(s.x[i]).toFixed(1) + " " + sy(s.y[i]).toFixed(1);
        pen = true;
      }
      out.push('<path d="' + d + '" fill="none" stroke="' + s.color + '" stroke-width="1.6" stroke-linejoin="round"/>');
      if (s.x.length <= 40) {
        for (var j = 0; j < s.x.length; j++) {
          if (s.y[j] === null || !isFinite(s.y[j])) continue;
          out.push('<circle cx="' + sx(s.x[j]).toFixed(1) + '" cy="' + sy(s.y[j]).toFixed(1) + '" r="2.6" fill="' + s.color + '"/>');
        }
      }
    });
    out.push('<line class="guide" x1="0" x2="0" y1="' + M.top + '" y2="' + (M.top + h) + '" visibility="hidden"/>');
    out.push('<g class="marks"></g>');
    out.push('<rect class="hover" x="' + M.left + '" y="' + M.top + '" width="' + w + '" height="' + h + '" fill="transparent"/>');
    out.push("</svg>");
    plot.innerHTML = out.join("") + '<div class="tooltip"></div>';
    legend.innerHTML = spec.series.map(function (s, i) {
      return '<button type="button" data-i="' + i + '" class="' + (hidden[s.name] ? "off" : "") + '" title="show or hide">' +
        '<i style="background:' + s.color + '"></i>' + esc(s.name) + "</button>";
    }).join("");
    Array.prototype.forEach.call(legend.querySelectorAll("button"), function (b) {
      b.addEventListener("click", function () {
        var name = spec.series[Number(b.getAttribute("data-i"))].name;
        hidden[name] = !hidden[name];
        drawChart(box, spec);
      });
    });
    hover(plot, shown, sx, sy, x0, x1, w);
    box.setAttribute("data-rendered", "svg");
  }

  function hover(plot, shown, sx, sy, x0, x1, w) {
    var svg = plot.querySelector("svg"), rect = plot.querySelector("rect.hover");
    var guide = plot.querySelector("line.guide"), marks = plot.querySelector("g.marks");
    var tip = plot.querySelector(".tooltip");
    rect.addEventListener("mousemove", function (ev) {
      var box = svg.getBoundingClientRect();
      var scale = box.width ? svg.viewBox.baseVal.width / box.width : 1;
      var px = (ev.clientX - box.left) * scale;
      var x = x0 + ((px - M.left) / (w || 1)) * (x1 - x0);
      var best = null;
      shown.forEach(function (s) {
        var i = nearestIndex(s.x, x);
        if (i >= 0 && (best === null || Math.abs(s.x[i] - x) < Math.abs(best - x))) best = s.x[i];
      });
      if (best === null) return;
      var rows = [], dots = [];
      shown.forEach(function (s) {
        var i = nearestIndex(s.x, best);
        if (i < 0 || s.x[i] !== best || s.y[i] === null) return;
        rows.push('<div><i style="background:' + s.color + '"></i>' + esc(s.name) + ": <b>" + esc(fmt(s.y[i])) + "</b></div>");
        dots.push('<circle cx="' + sx(best) + '" cy="' + sy(s.y[i]) + '" r="4" fill="none" stroke="' + s.color + '" stroke-width="2"/>');
      });
      guide.setAttribute("x1", sx(best)); guide.setAttribute("x2", sx(best)); guide.setAttribute("visibility", "visible");
      marks.innerHTML = dots.join("");
      tip.innerHTML = "<div>step <b>" + esc(fmt(best)) + "</b></div>" + rows.join("");
      tip.style.display = "block";
      var left = sx(best) / scale + 12;
      if (left + tip.offsetWidth > plot.clientWidth) left = sx(best) / scale - tip.offsetWidth - 12;
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = "6px";
    });
    rect.addEventListener("mouseleave", function () {
      guide.setAttribute("visibility", "hidden"); marks.innerHTML = ""; tip.style.display = "none";
    });
  }

  function drawAll(data) {
    Array.prototype.forEach.call(document.querySelectorAll(".chart[data-chart]"), function (box) {
      var spec = data.charts[Number(box.getAttribute("data-chart"))];
      if (spec) drawChart(box, spec);
    });
  }

  function samplesTable() {
    var table = document.getElementById("samples-table"), input = document.getElementById("samples-filter");
    var count = document.getElementById("samples-count");
    if (!table) return;
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    if (input) {
      input.addEventListener("input", function () {
        var q = input.value.toLowerCase(), n = 0;
        rows.forEach(function (r) {
          var hit = !q || r.textContent.toLowerCase().indexOf(q) >= 0;
          r.style.display = hit ? "" : "none";
          if (hit) n++;
        });
        if (count) count.textContent = n + " of " + rows.length + " rows";
      });
    }
    Array.prototype.forEach.call(table.querySelectorAll("th.sortable"), function (th) {
      th.addEventListener("click", function () {
        var col = th.cellIndex, numeric = th.getAttribute("data-sort") === "num";
        var dir = th.getAttribute("data-dir") === "asc" ? -1 : 1;
        th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
        rows.sort(function (a, b) {
          var u = a.cells[col].getAttribute("data-v") || a.cells[col].textContent;
          var v = b.cells[col].getAttribute("data-v") || b.cells[col].textContent;
          return (numeric ? (Number(u) - Number(v)) : u.localeCompare(v)) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
    table.setAttribute("data-interactive", "yes");
  }

  function start() {
    var node = document.getElementById("report-data");
    var data = node ? JSON.parse(node.textContent) : {charts: []};
    drawAll(data);
    samplesTable();
    Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) {
      d.addEventListener("toggle", function () { if (d.open) drawAll(data); });
    });
    var timer = null;
    window.addEventListener("resize", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { drawAll(data); }, 150);
    });
    document.documentElement.setAttribute("data-charts-drawn", String(data.charts.length));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
