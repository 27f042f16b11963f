/* Lethe dashboard: draws every chart a page declares with data-chart="…" from the JSON in
 * the <script type="application/json"> its data-source names. Pages work without this;
 * it only adds the charts. */
(function () {
  "use strict";

  function readJSON(id) {
    var node = document.getElementById(id);
    if (!node) return null;
    try {
      return JSON.parse(node.textContent);
    } catch (e) {
      return null;
    }
  }

  function verificationRows(data) {
    return (data && data.job && data.job.verification && data.job.verification.rows) || [];
  }

  var kinds = {
    bars: function (node, data) {
      var x = node.dataset.x, y = node.dataset.y;
      LetheCharts.bars(node, (data || []).map(function (d) {
        return { label: d[x], value: d[y] };
      }), {
        label: node.dataset.label, yLabel: "requests", minMax: 4, integerY: true,
        xFormat: function (label) { return String(label).slice(5); }
      });
    },
    grouped: function (node, data) {
      var metric = node.dataset.metric;
      var groups = verificationRows(data).map(function (r) {
        var values = {};
        values.before = r.before ? r.before[metric] : null;
        values.after = r.after ? r.after[metric] : null;
        return { label: r.set, values: values };
      });
      LetheCharts.grouped(node, groups, ["before", "after"], {
        label: node.dataset.label, max: 1
      });
    }
  };

  /* Draw the charts under `root` (the whole page by default). */
  function drawCharts(root) {
    (root || document).querySelectorAll("[data-chart]").forEach(function (node) {
      var draw = kinds[node.dataset.chart];
      if (draw) draw(node, readJSON(node.dataset.source));
    });
  }

  window.Lethe = { drawCharts: drawCharts, readJSON: readJSON };
  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
})();
