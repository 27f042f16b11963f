/* Job page: live progress over server-sent events (one stream per open page; the server
 * polls the job row and pushes only changes), and the loss curve drawn from the points
 * the page started with plus those the events bring. */
(function () {
  "use strict";

  document.addEventListener("DOMContentLoaded", function () {
    var data = Lethe.readJSON("job-data");
    if (!data || !data.job) return;
    var state = data.job;
    var history = (data.history || []).slice();
    var $ = function (id) { return document.getElementById(id); };
    var lossChart = $("loss-chart");
    var liveState = $("live-state");

    function duration(seconds) {
      if (typeof seconds !== "number" || !isFinite(seconds)) return "—";
      seconds = Math.abs(seconds);
      if (seconds < 60) return Math.round(seconds) + " s";
      if (seconds < 3600) return Math.floor(seconds / 60) + " min";
      return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    }

    /* An ISO timestamp as the server writes it: YYYY-MM-DD HH:MM UTC. */
    function when(iso) {
      if (!iso) return "—";
      var d = new Date(iso);
      if (isNaN(d.getTime())) return iso;
      return d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
    }

    function setText(id, text) {
      var node = $(id);
      if (node && node.textContent !== text) node.textContent = text;
    }

    function link(href, text) {
      var a = document.createElement("a");
      a.href = href;
      var code = document.createElement("code");
      code.textContent = text;
      a.appendChild(code);
      return a;
    }

    function badge(status) {
      var span = document.createElement("span");
      span.className = "badge badge--" + status;
      span.textContent = status;
      return span;
    }

    function drawLoss() {
      var byAttempt = {};
      var order = [];
      history.forEach(function (p) {
        if (!(p.attempt in byAttempt)) { byAttempt[p.attempt] = []; order.push(p.attempt); }
        byAttempt[p.attempt].push({ x: p.step, y: p.loss });
      });
      var series = order.map(function (a) {
        return { name: "attempt " + a, points: byAttempt[a] };
      });
      LetheCharts.lines(lossChart, series, {
        label: "Training loss by step", xLabel: "step", yLabel: "loss", xMin: 0,
        xMax: state.total_steps || undefined, integerX: true,
        emptyText: state.terminal ? "no loss points observed" : "waiting for the first step"
      });
      lossChart.dataset.points = String(history.length);
    }

    function addPoint(p) {
      if (!p || typeof p.loss !== "number") return false;
      var last = history[history.length - 1];
      if (last && last.attempt === p.attempt && last.step === p.step) return false;
      history.push(p);
      if (history.length > 2000) history.shift();
      return true;
    }

    function render(s) {
      var status = $("job-status");
      if (status.dataset.status !== s.status) {
        status.textContent = "";
        status.appendChild(badge(s.status));
        status.dataset.status = s.status;
      }
      var bar = $("job-progress");
      bar.max = s.total_steps || 1;
      bar.value = s.step;
      bar.textContent = s.step + " / " + s.total_steps;
      setText("job-step", String(s.step));
      setText("job-total", s.total_steps ? String(s.total_steps) : "—");
      setText("job-loss", typeof s.loss === "number" ? s.loss.toFixed(4) : "—");
      setText("job-eta", s.terminal ? "—" : duration(s.eta_seconds));
      setText("job-attempts", String(s.attempts));
      setText("job-started", when(s.started_at));
      setText("job-finished", when(s.finished_at));
      var err = $("job-error");
      err.hidden = !s.error;
      setText("job-error", s.error || "");
      $("job-cancel").hidden = !s.cancel_requested || s.terminal;
      if (s.certificate_id) {
        var cert = $("job-certificate");
        if (!cert.querySelector("a")) {
          cert.textContent = "";
          cert.appendChild(link("/dashboard/certificates/" + s.certificate_id,
            s.certificate_id.slice(0, 8)));
        }
      }
      if (s.published_version_id) {
        var pub = $("job-published");
        if (!pub.querySelector("a")) {
          pub.textContent = "";
          pub.appendChild(link("/dashboard/models#version-" + s.published_version_id,
            s.published_version_id.slice(0, 8)));
        }
      }
    }

    function swap(id, html) {
      var node = $(id);
      if (node && typeof html === "string" && node.dataset.html !== html) {
        // server-rendered by the page's own autoescaping templates
        node.innerHTML = html;
        node.dataset.html = html;
        Lethe.drawCharts(node);
      }
    }

    function showLive(text, kind) {
      liveState.hidden = false;
      liveState.textContent = text;
      liveState.className = "live-state live-state--" + kind;
    }

    $("job-status").dataset.status = state.status;
    render(state);
    drawLoss();
    if (state.terminal || !window.EventSource) return;

    var source = new EventSource(data.events);
    showLive("connecting…", "wait");
    source.addEventListener("open", function () { showLive("live", "on"); });
    source.addEventListener("progress", function (event) {
      var s = JSON.parse(event.data);
      var grew = addPoint(s.point);
      state = s;
      render(s);
      // the charts under #verification read the page's JSON: keep it current first
      $("job-data").textContent = JSON.stringify({ job: s, history: history, events: data.events });
      if (s.html) {
        swap("verification", s.html.verification);
        swap("attempts", s.html.attempts);
      }
      if (grew || s.terminal) drawLoss();
      document.body.dataset.liveEvents = String(Number(document.body.dataset.liveEvents || 0) + 1);
    });
    source.addEventListener("done", function () {
      source.close();
      showLive("finished", "off");
      drawLoss();
    });
    source.addEventListener("gone", function () {
      source.close();
      showLive("live updates stopped — reload the page", "off");
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        showLive("live updates stopped — reload the page", "off");
      } else {
        showLive("reconnecting…", "wait");
      }
    });
    window.addEventListener("pagehide", function () { source.close(); });
  });
})();
