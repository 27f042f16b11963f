/* Lethe dashboard charts: small hand-written SVG charts drawn from JSON (no library).
 *
 * LetheCharts.bars(el, [{label, value}], opts)           one series of bars
 * LetheCharts.lines(el, [{name, points: [{x, y}]}], opts) one line per series
 * LetheCharts.grouped(el, [{label, values: {key: v}}], keys, opts)  bars side by side
 *
 * Each chart is drawn at the container's pixel width (so text stays legible on a phone)
 * and re-drawn when the window is resized; it is an <svg role="img"> with a title. */
(function () {
  "use strict";

  var NS = "http://www.w3.org/2000/svg";
  var HEIGHT = 240;
  var MARGIN = { top: 26, right: 14, bottom: 40, left: 50 };
  var drawn = [];

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) {
      node.setAttribute(k, String(attrs[k]));
    });
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function isNum(v) {
    return typeof v === "number" && isFinite(v);
  }

  /* About `count` round tick values covering [min, max], at least `minStep` apart; the
   * array carries its step's decimals (`.digits`) so every label has the same form. */
  function ticks(min, max, count, minStep) {
    if (!isNum(min) || !isNum(max)) { min = 0; max = 1; }
    if (min === max) {
      max = min + (min === 0 ? 1 : Math.abs(min) * 0.5);
    }
    var raw = (max - min) / Math.max(1, count);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * mag; })
      .find(function (s) { return s >= raw; }) || 10 * mag;
    step = Math.max(step, minStep || 0);
    var out = [];
    for (var t = Math.floor(min / step) * step; t <= max + step * 0.5; t += step) {
      out.push(Number(t.toPrecision(12)));
      if (out.length > 50) break;
    }
    if (out[out.length - 1] < max) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
    var digits = 0;
    while (digits < 4 && Math.abs(Math.round(step * Math.pow(10, digits)) -
      step * Math.pow(10, digits)) > 1e-9) digits++;
    out.digits = digits;
    return out;
  }

  function fmt(v) {
    if (!isNum(v)) return "—";
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1000) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1).replace(/\.0$/, "");
    if (a >= 1) return v.toFixed(2).replace(/0$/, "").replace(/\.$/, "");
    return v.toPrecision(2);
  }

  /* A fresh <svg> in `container`: returns the plot group and its size. */
  function frame(container, label) {
    container.textContent = "";
    var width = Math.max(260, Math.floor(container.clientWidth || 600));
    var svg = el("svg", {
      width: width, height: HEIGHT, viewBox: "0 0 " + width + " " + HEIGHT,
      role: "img", "aria-label": label || "chart", class: "chart-svg"
    }, container);
    el("title", {}, svg, label || "chart");
    var plot = el("g", { transform: "translate(" + MARGIN.left + "," + MARGIN.top + ")" }, svg);
    return {
      svg: svg, plot: plot,
      w: width - MARGIN.left - MARGIN.right,
      h: HEIGHT - MARGIN.top - MARGIN.bottom
    };
  }

  function yAxis(f, yt, y, label) {
    yt.forEach(function (t) {
      var py = y(t);
      el("line", { x1: 0, x2: f.w, y1: py, y2: py, class: "chart-grid" }, f.plot);
      el("text", { x: -6, y: py + 4, "text-anchor": "end", class: "chart-tick" }, f.plot,
        t.toFixed(yt.digits || 0));
    });
    if (label) {
      el("text", {
        x: -MARGIN.left + 12, y: f.h / 2, class: "chart-axis-label", "text-anchor": "middle",
        transform: "rotate(-90 " + (-MARGIN.left + 12) + " " + f.h / 2 + ")"
      }, f.plot, label);
    }
    el("line", { x1: 0, x2: f.w, y1: f.h, y2: f.h, class: "chart-axis" }, f.plot);
  }

  function empty(f, message) {
    el("text", { x: f.w / 2, y: f.h / 2, "text-anchor": "middle", class: "chart-empty" },
      f.plot, message);
  }

  function legend(f, names) {
    var x = f.w;
    for (var i = names.length - 1; i >= 0; i--) {
      var width = 18 + names[i].length * 7;
      x -= width + 8;
      var g = el("g", { transform: "translate(" + x + "," + (-MARGIN.top + 4) + ")" }, f.plot);
      el("rect", { x: 0, y: 0, width: 10, height: 10, class: "chart-series-" + i }, g);
      el("text", { x: 14, y: 9, class: "chart-legend" }, g, names[i]);
    }
  }

  function remember(container, draw) {
    drawn = drawn.filter(function (d) { return d.container !== container; });
    drawn.push({ container: container, draw: draw });
    draw();
  }

  function bars(container, data, opts) {
    opts = opts || {};
    remember(container, function () {
      var f = frame(container, opts.label);
      var values = data.map(function (d) { return isNum(d.value) ? d.value : 0; });
      var yt = ticks(0, Math.max.apply(null, values.concat([opts.minMax || 1])), 4,
        opts.integerY ? 1 : 0);
      var top = yt[yt.length - 1];
      var y = function (v) { return f.h - (v / top) * f.h; };
      yAxis(f, yt, y, opts.yLabel);
      if (!data.length) return empty(f, "no data");
      var band = f.w / data.length;
      var every = Math.ceil(data.length / Math.max(1, Math.floor(f.w / 64)));
      data.forEach(function (d, i) {
        var v = values[i];
        var bar = el("rect", {
          x: i * band + band * 0.15, width: Math.max(1, band * 0.7),
          y: y(v), height: Math.max(0, f.h - y(v)), class: "chart-bar"
        }, f.plot);
        el("title", {}, bar, d.label + ": " + fmt(v));
        if (i % every === 0) {
          el("text", {
            x: i * band + band / 2, y: f.h + 16, "text-anchor": "middle", class: "chart-tick"
          }, f.plot, opts.xFormat ? opts.xFormat(d.label) : d.label);
        }
      });
    });
  }

  function lines(container, series, opts) {
    opts = opts || {};
    remember(container, function () {
      var f = frame(container, opts.label);
      var pts = [];
      series.forEach(function (s) { pts = pts.concat(s.points); });
      pts = pts.filter(function (p) { return isNum(p.x) && isNum(p.y); });
      if (!pts.length) {
        yAxis(f, [0, 1], function (v) { return f.h - v * f.h; }, opts.yLabel);
        return empty(f, opts.emptyText || "no data yet");
      }
      var xs = pts.map(function (p) { return p.x; });
      var ys = pts.map(function (p) { return p.y; });
      var xmin = Math.min.apply(null, xs.concat(opts.xMin !== undefined ? [opts.xMin] : []));
      var xmax = Math.max.apply(null, xs.concat(opts.xMax !== undefined ? [opts.xMax] : []));
      if (xmax === xmin) xmax = xmin + 1;
      var yt = ticks(Math.min.apply(null, ys), Math.max.apply(null, ys), 4);
      var y0 = yt[0], y1 = yt[yt.length - 1];
      var x = function (v) { return ((v - xmin) / (xmax - xmin)) * f.w; };
      var y = function (v) { return f.h - ((v - y0) / (y1 - y0)) * f.h; };
      yAxis(f, yt, y, opts.yLabel);
      var xt = ticks(xmin, xmax, Math.max(2, Math.floor(f.w / 70)), opts.integerX ? 1 : 0);
      xt.forEach(function (t) {
        if (t < xmin || t > xmax) return;
        el("text", { x: x(t), y: f.h + 16, "text-anchor": "middle", class: "chart-tick" },
          f.plot, t.toFixed(xt.digits || 0));
      });
      if (opts.xLabel) {
        el("text", { x: f.w / 2, y: f.h + 34, "text-anchor": "middle", class: "chart-axis-label" },
          f.plot, opts.xLabel);
      }
      series.forEach(function (s, i) {
        var ok = s.points.filter(function (p) { return isNum(p.x) && isNum(p.y); });
        if (!ok.length) return;
        var d = ok.map(function (p, j) {
          return (j ? "L" : "M") + x(p.x).toFixed(1) + " " + y(p.y).toFixed(1);
        }).join(" ");
        el("path", { d: d, class: "chart-line chart-series-" + i }, f.plot);
        var last = ok[ok.length - 1];
        var dot = el("circle", { cx: x(last.x), cy: y(last.y), r: 3.5,
          class: "chart-dot chart-series-" + i }, f.plot);
        el("title", {}, dot, (s.name ? s.name + ", " : "") + "step " + last.x + ": " + fmt(last.y));
      });
      if (series.length > 1) legend(f, series.map(function (s) { return s.name; }));
    });
  }

  function grouped(container, groups, keys, opts) {
    opts = opts || {};
    remember(container, function () {
      var f = frame(container, opts.label);
      var values = [];
      groups.forEach(function (g) {
        keys.forEach(function (k) { if (isNum(g.values[k])) values.push(g.values[k]); });
      });
      var yt = ticks(0, Math.max.apply(null, values.concat([opts.max || 0, 0.0001])), 4);
      var top = yt[yt.length - 1];
      var y = function (v) { return f.h - (v / top) * f.h; };
      yAxis(f, yt, y, opts.yLabel);
      if (!groups.length) return empty(f, "no data");
      var band = f.w / groups.length;
      var inner = (band * 0.76) / keys.length;
      groups.forEach(function (g, i) {
        keys.forEach(function (k, j) {
          var v = g.values[k];
          var x0 = i * band + band * 0.12 + j * inner;
          if (!isNum(v)) {
            el("text", { x: x0 + inner / 2, y: f.h - 4, "text-anchor": "middle",
              class: "chart-tick" }, f.plot, "n/a");
            return;
          }
          var bar = el("rect", { x: x0, width: Math.max(1, inner - 2), y: y(v),
            height: Math.max(0, f.h - y(v)), class: "chart-bar chart-series-" + j }, f.plot);
          el("title", {}, bar, g.label + ", " + k + ": " + fmt(v));
        });
        el("text", { x: i * band + band / 2, y: f.h + 16, "text-anchor": "middle",
          class: "chart-tick" }, f.plot, g.label);
      });
      legend(f, keys);
    });
  }

  var timer = null;
  window.addEventListener("resize", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      drawn = drawn.filter(function (d) { return d.container.isConnected; });
      drawn.forEach(function (d) { d.draw(); });
    }, 150);
  });

  window.LetheCharts = { bars: bars, lines: lines, grouped: grouped, format: fmt };
})();
