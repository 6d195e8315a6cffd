(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var charts = JSON.parse(document.getElementById("report-data").textContent).charts;
  var TIER_COLOURS = {very_high: "#8a1538", high: "#d5281b", moderate: "#ed8b00", low: "#009639"};
  var LINE_COLOURS = ["#1b1b1b", "#005eb8", "#ed8b00", "#009639", "#7c2855", "#00a9ce", "#d5281b", "#330072",
                      "#78be20", "#ae2573", "#41b6e6", "#ffb81c"];

  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, String(attrs[key])); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function svgFor(chart, width, height) {
    return el("svg", {id: chart.id, viewBox: "0 0 " + width + " " + height, width: width,
                      height: height, role: "img", "aria-label": chart.title});
  }

  function formatTick(value, decimals) {
    return value.toLocaleString("en-GB", {minimumFractionDigits: decimals, maximumFractionDigits: decimals});
  }

  // An axis fitted to the data (not from 0): the values' range, padded, in round steps. A flat series
  // gets a band around its value, never 0 to 1 with every point on the floor.
  function fitted(values) {
    if (!values.length) { return {min: 0, max: 1, step: 0.25}; }
    var high = Math.max.apply(null, values), low = Math.min.apply(null, values);
    var pad = high > low ? (high - low) * 0.1 : Math.max(Math.abs(high) * 0.1, 0.1);
    high += pad; low = low - pad;
    if (Math.min.apply(null, values) >= 0 && low < 0) { low = 0; }
    var step = Math.pow(10, Math.floor(Math.log10((high - low) / 4)));
    var tickStep = [1, 2, 2.5, 5, 10].map(function (m) { return m * step; })
      .filter(function (s) { return (high - low) / s <= 5; })[0];
    return {min: Math.floor(low / tickStep) * tickStep, max: Math.ceil(high / tickStep) * tickStep, step: tickStep};
  }

  // A pyramid of equal-height bands, narrow at the top. The band widths follow the tiers' places, not
  // their counts, because the tiers differ by orders of magnitude; the counts are the labels beside them.
  function drawPyramid(holder, chart) {
    var rowHeight = 58, width = 680, apex = 190, half = 180, height = chart.bars.length * rowHeight + 10;
    var svg = svgFor(chart, width, height);
    svg.setAttribute("class", "pyramid");
    svg.setAttribute("data-bars", chart.bars.length);
    chart.bars.forEach(function (bar, i) {
      var n = chart.bars.length, y0 = 5 + i * rowHeight, y1 = y0 + rowHeight - 4;
      var top = half * i / n, bottom = half * (i + 1) / n;
      var g = el("g", {"class": "bar", "data-tier": bar.tier, "data-value": bar.value === null ? "" : bar.value,
                       "data-suppressed": bar.suppressed ? "true" : "false"});
      var points = [[apex - top, y0], [apex + top, y0], [apex + bottom, y1], [apex - bottom, y1]];
      g.appendChild(el("polygon", {points: points.map(function (p) { return p.join(","); }).join(" "),
                                   fill: bar.suppressed ? "#aeb7bd" : (TIER_COLOURS[bar.tier] || "#4c6272")}));
      g.appendChild(el("title", {}, bar.name + ": " + bar.label + (bar.share ? " (" + bar.share + ")" : "")));
      var x = apex + half + 24, y = (y0 + y1) / 2;
      g.appendChild(el("text", {"class": "bar-name", x: x, y: y - 6, "font-weight": "600"}, bar.name));
      g.appendChild(el("text", {"class": "bar-label", x: x, y: y + 14, "font-size": "16"}, bar.label));
      if (bar.share) {
        g.appendChild(el("text", {"class": "bar-share", x: x + 150, y: y + 14, fill: "#4c6272"},
                         bar.share + " of people"));
      }
      svg.appendChild(g);
    });
    holder.appendChild(svg);
  }

  // One line per geography over the months; a suppressed month is a gap in the line with a "*" above it.
  function drawLines(holder, chart) {
    // One line (the area alone) needs a narrower legend than several.
    var width = 900, height = 330, left = 70, right = chart.series.length > 1 ? 280 : 200, topMargin = 34,
        bottomMargin = 46;
    var plotW = width - left - right, plotH = height - topMargin - bottomMargin;
    var index = {};
    chart.periods.forEach(function (p, i) { index[p.period] = i; });
    var values = [];
    chart.series.forEach(function (s) {
      s.points.forEach(function (p) { if (p.value !== null) { values.push(p.value); } });
    });
    var scale = fitted(values);
    var tickStep = scale.step, yMin = scale.min, yMax = scale.max;
    function x(i) { return left + (chart.periods.length < 2 ? plotW / 2 : plotW * i / (chart.periods.length - 1)); }
    function y(v) { return topMargin + plotH - plotH * (v - yMin) / (yMax - yMin); }

    var svg = svgFor(chart, width, height);
    svg.setAttribute("class", "lines");
    svg.setAttribute("data-series", chart.series.length);
    svg.setAttribute("data-points", chart.periods.length);
    var axes = el("g", {"class": "axes"});
    for (var t = yMin; t <= yMax + tickStep / 2; t += tickStep) {
      axes.appendChild(el("line", {x1: left, x2: left + plotW, y1: y(t), y2: y(t), stroke: "#e8edee"}));
      axes.appendChild(el("text", {"class": "axis-label", x: left - 8, y: y(t) + 4, "text-anchor": "end"},
                          formatTick(t, tickStep < 1 ? chart.decimals : 0)));
    }
    var every = Math.ceil(chart.periods.length / 12);
    chart.periods.forEach(function (p, i) {
      if (i % every === 0) {
        axes.appendChild(el("text", {"class": "axis-label", x: x(i), y: topMargin + plotH + 18,
                                     "text-anchor": "middle"}, p.label));
      }
    });
    // The unit above the axis, read level: turned on its side a long unit ran off the chart.
    axes.appendChild(el("text", {"class": "axis-label", x: 4, y: 14, "text-anchor": "start"}, chart.unit));
    svg.appendChild(axes);

    chart.series.forEach(function (s, n) {
      var colour = LINE_COLOURS[n % LINE_COLOURS.length];
      var g = el("g", {"class": "series", "data-geography": s.code, "data-name": s.name, "data-level": s.level});
      var path = "", pen = "M";
      s.points.forEach(function (p) {
        if (p.value === null) { pen = "M"; return; }
        path += pen + x(index[p.period]).toFixed(1) + " " + y(p.value).toFixed(1) + " ";
        pen = "L";
      });
      g.appendChild(el("path", {d: path.trim(), fill: "none", stroke: colour,
                                "stroke-width": s.level === "area" ? 3 : 1.8}));
      s.points.forEach(function (p) {
        if (p.value === null) { return; }  // suppressed: a gap in the line, listed under the chart
        var mark = el("circle", {"class": "point", "data-period": p.period, "data-value": p.value,
                                 "data-suppressed": "false", cx: x(index[p.period]), cy: y(p.value), r: 3.5,
                                 fill: colour});
        mark.appendChild(el("title", {}, s.name + ", " + chart.periods[index[p.period]].label + ": " + p.display));
        g.appendChild(mark);
      });
      svg.appendChild(g);
      var legendY = topMargin + 8 + n * 20;
      var item = el("g", {"class": "legend-entry", "data-geography": s.code});
      item.appendChild(el("line", {x1: left + plotW + 20, x2: left + plotW + 44, y1: legendY, y2: legendY,
                                   stroke: colour, "stroke-width": s.level === "area" ? 3 : 1.8}));
      item.appendChild(el("text", {"class": "legend-item", x: left + plotW + 50, y: legendY + 4}, s.name));
      svg.appendChild(item);
    });
    holder.appendChild(svg);
  }

  // The places ranked, one row each: a dot at the value, a line across its 95% interval, and the area's
  // value as a dashed reference line. The axis fits the intervals.
  function drawDots(holder, chart) {
    var rowHeight = 26, left = 250, right = 150, topMargin = 24, bottomMargin = 46, width = 900;
    var plotW = width - left - right, height = topMargin + bottomMargin + rowHeight * chart.rows.length;
    var values = [];
    chart.rows.forEach(function (r) {
      values.push(r.value);
      if (r.low !== null) { values.push(r.low, r.high); }
    });
    if (chart.area) { values.push(chart.area.value); }
    var scale = fitted(values);
    if (chart.ceiling !== null && scale.max > chart.ceiling && Math.max.apply(null, values) <= chart.ceiling) {
      scale.max = chart.ceiling;  // no 120%
    }
    function x(v) { return left + plotW * (v - scale.min) / (scale.max - scale.min); }
    var svg = svgFor(chart, width, height);
    svg.setAttribute("class", "dots");
    svg.setAttribute("data-rows", chart.rows.length);
    var axes = el("g", {"class": "axes"}), bottom = topMargin + rowHeight * chart.rows.length;
    for (var t = scale.min; t <= scale.max + scale.step / 2; t += scale.step) {
      axes.appendChild(el("line", {x1: x(t), x2: x(t), y1: topMargin - 6, y2: bottom, stroke: "#e8edee"}));
      axes.appendChild(el("text", {"class": "axis-label", x: x(t), y: bottom + 16, "text-anchor": "middle"},
                          formatTick(t, scale.step < 1 ? chart.decimals : 0)));
    }
    axes.appendChild(el("text", {"class": "axis-label", x: left + plotW / 2, y: bottom + 36, "text-anchor": "middle"},
                        chart.unit));
    svg.appendChild(axes);
    if (chart.area) {
      var ref = el("g", {"class": "area-reference", "data-value": chart.area.value});
      ref.appendChild(el("line", {x1: x(chart.area.value), x2: x(chart.area.value), y1: topMargin - 8, y2: bottom,
                                  stroke: "#1b1b1b", "stroke-dasharray": "4 3"}));
      ref.appendChild(el("text", {"class": "axis-label", x: x(chart.area.value), y: topMargin - 12,
                                  "text-anchor": "middle"}, chart.area.name + " " + chart.area.display));
      svg.appendChild(ref);
    }
    chart.rows.forEach(function (r, i) {
      var y = topMargin + rowHeight * i + rowHeight / 2;
      var g = el("g", {"class": "place", "data-geography": r.code, "data-level": r.level, "data-value": r.value,
                       "data-low": r.low === null ? "" : r.low, "data-high": r.high === null ? "" : r.high});
      // Councils in bold, localities plain: the two levels share one ranking.
      g.appendChild(el("text", {"class": "place-name", x: left - 10, y: y + 4, "text-anchor": "end",
                                "font-weight": r.level === "local_authority" ? "700" : "400"}, r.name));
      if (r.low !== null) {
        g.appendChild(el("line", {"class": "interval", x1: x(r.low), x2: x(r.high), y1: y, y2: y,
                                  stroke: "#005eb8", "stroke-width": 2}));
      }
      var dot = el("circle", {"class": "dot", cx: x(r.value), cy: y, r: 5, fill: "#005eb8"});
      dot.appendChild(el("title", {}, r.name + ": " + r.display + (r.interval ? " (" + r.interval + ")" : "")));
      g.appendChild(dot);
      g.appendChild(el("text", {"class": "value-label", x: left + plotW + 12, y: y + 4}, r.display));
      svg.appendChild(g);
    });
    holder.appendChild(svg);
  }

  var drawers = {pyramid: drawPyramid, lines: drawLines, dots: drawDots};
  Array.prototype.forEach.call(document.querySelectorAll(".chart[data-chart]"), function (holder) {
    var chart = charts[holder.getAttribute("data-chart")];
    if (chart && drawers[chart.kind]) { drawers[chart.kind](holder, chart); }
  });
  document.body.setAttribute("data-charts-drawn", "true");
})();
