/* tpwng viewer: anomaly-score timelines beside the video. Self-contained: nothing is fetched. */
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("tpwng-data").textContent);
  const STYLE = getComputedStyle(document.documentElement);
  const colour = (name) => STYLE.getPropertyValue(name).trim();
  const CLASS_COLOURS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f", "#1f77b4", "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2"];

  // ------------------------------------------------------------------ data and formatting

  /** Values quantised to little-endian uint16 (0..65535 = 0..1), base64-encoded. */
  function decode(b64) {
    const bin = atob(b64 || "");
    const out = new Float32Array(bin.length >> 1);
    for (let i = 0; i < out.length; i++) {
      out[i] = (bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)) / 65535;
    }
    return out;
  }

  function prepare(v) {
    v.values = decode(v.scores);
    v.curves = (v.class_curves || []).map((c, k) => ({
      name: c.name, values: decode(c.values), colour: CLASS_COLOURS[k % CLASS_COLOURS.length],
      shown: true,
    }));
    v.rate = v.fps > 0 ? v.fps : 1; // frames per time unit: seconds, or frames without a rate
    v.unit = v.fps > 0 ? "s" : "frame";
    v.total = v.frames / v.rate;
    v.detected = v.detected || [];
    v.stats = v.stats || {};
    return v;
  }

  const clamp = (x, a, b) => Math.min(b, Math.max(a, x));

  function fmtTime(v, t) {
    if (v.unit !== "s") return "frame " + Math.round(t);
    const m = Math.floor(t / 60), s = t - 60 * m;
    return m + ":" + (s < 10 ? "0" : "") + s.toFixed(1);
  }

  function fmtSpan(v, iv) {
    if (v.unit !== "s") return "frames " + iv[0] + "\u2013" + iv[1];
    return fmtTime(v, iv[0] / v.rate) + "\u2013" + fmtTime(v, iv[1] / v.rate);
  }

  const fmtLength = (v) => (v.unit === "s" ? fmtTime(v, v.total) : v.frames + " frames");

  /** A count of frames, and below it the time they last. */
  function framesCell(v, n) {
    const td = el("td", { class: "num" + (n ? " tp-bad" : "") },
      n === null || n === undefined ? "\u2013" : String(n));
    if (n && v.fps > 0) td.append(el("small", { text: (n / v.fps).toFixed(1) + " s" }));
    return td;
  }

  const fmtNum = (x, d) => (x === null || x === undefined ? "\u2013" : x.toFixed(d));

  function snippetAt(v, t) {
    return clamp(Math.floor((t * v.rate) / v.stride), 0, v.values.length - 1);
  }

  function intervalMax(v, iv) {
    let m = 0;
    const last = Math.max(iv[0], iv[1] - 1);
    for (let i = snippetAt(v, iv[0] / v.rate); i <= snippetAt(v, last / v.rate); i++) {
      m = Math.max(m, v.values[i]);
    }
    return m;
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, val] of Object.entries(attrs || {})) {
      if (val === null || val === undefined || val === false) continue;
      if (k === "text") e.textContent = val;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), val);
      else e.setAttribute(k, val === true ? "" : val);
    }
    e.append(...kids.filter((x) => x !== null && x !== undefined));
    return e;
  }

  /** A name that may wrap after its underscores, slashes and dots. */
  function breakable(name) {
    const parts = String(name).split(/(?<=[_/.\-])/);
    return parts.flatMap((p, k) => (k ? [el("wbr"), p] : [p]));
  }

  // ------------------------------------------------------------------ drawing

  /** Min and max of the snippets under each of `cols` columns: a long video is drawn with one
   *  vertex per column, and no peak between two columns is lost. */
  function envelope(v, values, cols) {
    const n = values.length, lo = new Float32Array(cols), hi = new Float32Array(cols);
    const per = v.frames / cols / v.stride; // snippets per column
    for (let c = 0; c < cols; c++) {
      const i0 = Math.min(n - 1, Math.floor(c * per));
      const i1 = Math.min(n - 1, Math.max(i0, Math.ceil((c + 1) * per) - 1));
      let a = Infinity, b = -Infinity;
      for (let i = i0; i <= i1; i++) {
        const s = values[i];
        if (s < a) a = s;
        if (s > b) b = s;
      }
      lo[c] = a;
      hi[c] = b;
    }
    return { lo, hi };
  }

  function niceStep(span, px, minPx) {
    const target = (span * minPx) / Math.max(px, 1);
    const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
    for (const s of steps) if (s >= target) return s;
    return Math.pow(10, Math.ceil(Math.log10(target)));
  }

  class Timeline {
    constructor(canvas, mini) {
      this.canvas = canvas;
      this.mini = mini;
      this.layer = document.createElement("canvas"); // the static part, under the playhead
      this.v = null;
      this.time = 0;
      this.hover = null;
    }

    setTrack(v) {
      this.v = v;
      this.time = 0;
      this.canvas.dataset.snippets = v.values.length;
      this.canvas.dataset.total = v.total;
      this.render();
    }

    geometry() {
      const dpr = window.devicePixelRatio || 1;
      const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
      const m = this.mini ? { l: 0, r: 0, t: 2, b: 1 } : { l: 58, r: 12, t: 8, b: 22 };
      const lane = this.v && this.v.truth ? (this.mini ? 7 : 12) : 0;
      const gap = lane ? (this.mini ? 2 : 6) : 0;
      return { dpr, w, h, x0: m.l, x1: w - m.r, y0: m.t, y1: h - m.b - lane - gap,
        laneY: h - m.b - lane, lane };
    }

    x(t) { const g = this.g; return g.x0 + ((g.x1 - g.x0) * t) / (this.v.total || 1); }
    timeAt(px) { const g = this.g; return clamp((px - g.x0) / (g.x1 - g.x0), 0, 1) * this.v.total; }
    y(s) { const g = this.g; return g.y1 - (g.y1 - g.y0) * s; }

    /** Draw the static layer: intervals, truth lane, curves, threshold, axes. */
    render() {
      if (!this.v) return;
      const g = (this.g = this.geometry());
      if (g.w <= 0 || g.h <= 0) return;
      for (const c of [this.canvas, this.layer]) {
        c.width = Math.round(g.w * g.dpr);
        c.height = Math.round(g.h * g.dpr);
      }
      const v = this.v, ctx = this.layer.getContext("2d");
      ctx.setTransform(g.dpr, 0, 0, g.dpr, 0, 0);
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, g.w, g.h);
      ctx.font = "11px system-ui, 'DejaVu Sans', sans-serif";
      // score grid
      ctx.strokeStyle = "#eceef1";
      ctx.lineWidth = 1;
      for (const s of [0.25, 0.5, 0.75]) this.hline(ctx, this.y(s));
      // detected intervals, shaded over the plot
      ctx.fillStyle = "rgba(255, 127, 14, 0.22)";
      for (const iv of v.detected) this.span(ctx, iv, g.y0, g.y1 - g.y0);
      // ground truth, in its own lane under the plot
      if (v.truth) {
        ctx.fillStyle = "#eef2f7";
        ctx.fillRect(g.x0, g.laneY, g.x1 - g.x0, g.lane);
        ctx.fillStyle = colour("--truth");
        for (const iv of v.truth) this.span(ctx, iv, g.laneY, g.lane);
      }
      // class probability curves, then the anomaly score on top
      for (const c of v.curves) {
        if (!c.shown || this.mini) continue;
        ctx.strokeStyle = c.colour;
        ctx.lineWidth = 1;
        this.trace(ctx, c.values);
        ctx.stroke();
      }
      const points = this.trace(ctx, v.values, true);
      ctx.fillStyle = "rgba(214, 39, 40, 0.12)";
      ctx.fill();
      this.trace(ctx, v.values);
      ctx.strokeStyle = colour("--score");
      ctx.lineWidth = this.mini ? 1 : 1.5;
      ctx.stroke();
      this.canvas.dataset.points = points;
      // threshold
      if (DATA.threshold !== null && DATA.threshold !== undefined) {
        ctx.save();
        ctx.setLineDash([5, 4]);
        ctx.strokeStyle = "#555";
        ctx.lineWidth = 1;
        this.hline(ctx, this.y(DATA.threshold));
        ctx.restore();
      }
      ctx.strokeStyle = "#c3c8cf";
      ctx.strokeRect(g.x0 + 0.5, g.y0 + 0.5, g.x1 - g.x0 - 1, g.y1 - g.y0 - 1);
      if (!this.mini) this.axes(ctx);
      this.paint();
    }

    hline(ctx, y) {
      ctx.beginPath();
      ctx.moveTo(this.g.x0, Math.round(y) + 0.5);
      ctx.lineTo(this.g.x1, Math.round(y) + 0.5);
      ctx.stroke();
    }

    span(ctx, iv, y, h) {
      const a = this.x(iv[0] / this.v.rate), b = this.x(iv[1] / this.v.rate);
      ctx.fillRect(a, y, Math.max(1, b - a), h);
    }

    /** The path of one curve: a step per snippet, or per-column maxima when the snippets
     *  outnumber the pixels. `area` closes it down to 0 for filling. Returns its vertices. */
    trace(ctx, values, area) {
      const v = this.v, g = this.g, n = values.length;
      const cols = Math.max(1, Math.round((g.x1 - g.x0) * g.dpr));
      let points = 0, first = null, last = null;
      ctx.beginPath();
      const to = (x, y) => {
        if (first === null) { ctx.moveTo(x, y); first = x; } else ctx.lineTo(x, y);
        last = x;
        points++;
      };
      if (n <= cols / 2) {
        for (let i = 0; i < n; i++) {
          const f0 = Math.min(i * v.stride, v.frames);
          const f1 = i === n - 1 ? v.frames : Math.min((i + 1) * v.stride, v.frames);
          const y = this.y(values[i]);
          to(this.x(f0 / v.rate), y);
          to(this.x(f1 / v.rate), y);
        }
      } else {
        const { hi } = envelope(v, values, cols);
        const dx = (g.x1 - g.x0) / cols;
        for (let c = 0; c < cols; c++) to(g.x0 + (c + 0.5) * dx, this.y(hi[c]));
      }
      if (area && first !== null) {
        ctx.lineTo(last, g.y1);
        ctx.lineTo(first, g.y1);
        ctx.closePath();
      }
      return points;
    }

    axes(ctx) {
      const v = this.v, g = this.g;
      ctx.fillStyle = "#5f6670";
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (const s of [0, 0.5, 1]) ctx.fillText(s.toFixed(1), g.x0 - 6, this.y(s));
      if (DATA.threshold !== null && DATA.threshold !== undefined) {
        ctx.fillStyle = "#333";
        ctx.fillText("thr " + DATA.threshold.toFixed(2), g.x1 - 2, this.y(DATA.threshold) - 7);
      }
      ctx.fillStyle = "#5f6670";
      if (v.truth) ctx.fillText("truth", g.x0 - 6, g.laneY + g.lane / 2);
      ctx.save();
      ctx.translate(12, (g.y0 + g.y1) / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "center";
      ctx.fillText("score", 0, 0);
      ctx.restore();
      const step = niceStep(v.total, g.x1 - g.x0, 80);
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      ctx.strokeStyle = "#9aa1aa";
      for (let t = 0; t <= v.total + 1e-9; t += step) {
        const x = Math.round(this.x(t)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(x, g.h - 20);
        ctx.lineTo(x, g.h - 16);
        ctx.stroke();
        const label = v.unit === "s" ? fmtTime(v, t).replace(/\.0$/, "") : String(Math.round(t));
        ctx.fillText(label, clamp(x, g.x0 + 12, g.x1 - 12), g.h - 14);
      }
    }

    /** The static layer and the playhead (and the hover line) on top. */
    paint() {
      if (!this.v || !this.g) return;
      const g = this.g, ctx = this.canvas.getContext("2d");
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.drawImage(this.layer, 0, 0);
      ctx.setTransform(g.dpr, 0, 0, g.dpr, 0, 0);
      if (this.hover !== null) {
        ctx.strokeStyle = "rgba(0, 0, 0, 0.25)";
        ctx.beginPath();
        ctx.moveTo(this.hover + 0.5, g.y0);
        ctx.lineTo(this.hover + 0.5, g.h - (this.mini ? 0 : 20));
        ctx.stroke();
      }
      if (!this.mini) {
        const x = Math.round(this.x(this.time)) + 0.5;
        ctx.strokeStyle = "#111";
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.moveTo(x, g.y0 - 4);
        ctx.lineTo(x, g.h - 20);
        ctx.stroke();
        ctx.fillStyle = "#111";
        ctx.beginPath();
        ctx.moveTo(x - 5, g.y0 - 6);
        ctx.lineTo(x + 5, g.y0 - 6);
        ctx.lineTo(x, g.y0);
        ctx.fill();
      }
    }

    setTime(t) {
      this.time = t;
      this.canvas.dataset.playhead = t.toFixed(4);
      this.paint();
    }
  }

  // ------------------------------------------------------------------ player: video + timeline

  class Player {
    constructor(root) {
      this.root = root;
      root.classList.add("tp-player");
      this.heading = el("h2");
      this.media = el("div", { class: "tp-media" });
      this.canvas = el("canvas", { class: "tp-timeline", id: "timeline",
        title: "click or drag to seek" });
      this.readout = el("div", { class: "tp-readout", id: "readout" });
      this.legend = el("div", { class: "tp-legend" });
      this.chips = el("div", { class: "tp-chips", id: "intervals" });
      const help = el("div", { class: "tp-help" });
      help.innerHTML = "Click or drag the timeline to seek. <kbd>n</kbd> / <kbd>p</kbd>: next / " +
        "previous detected interval" + (DATA.kind === "testset"
        ? "; <kbd>N</kbd> / <kbd>P</kbd>: next / previous true interval; <kbd>j</kbd> / " +
          "<kbd>k</kbd>: next / previous video in the table" : "") + ".";
      root.append(this.heading, this.media, this.canvas, this.readout, this.legend, this.chips,
        help);
      this.timeline = new Timeline(this.canvas, false);
      this.v = null;
      this.video = null;
      this.t = 0;
      this.dragging = false;
      this.canvas.addEventListener("pointerdown", (e) => {
        if (!this.v) return;
        this.dragging = true;
        this.canvas.setPointerCapture(e.pointerId);
        this.seek(this.timeline.timeAt(e.offsetX));
      });
      this.canvas.addEventListener("pointermove", (e) => {
        if (!this.v) return;
        if (this.dragging) this.seek(this.timeline.timeAt(e.offsetX));
        this.timeline.hover = e.offsetX;
        this.timeline.paint();
        this.show(this.timeline.timeAt(e.offsetX), true);
      });
      const stop = () => { this.dragging = false; };
      this.canvas.addEventListener("pointerup", stop);
      this.canvas.addEventListener("pointercancel", stop);
      this.canvas.addEventListener("pointerleave", () => {
        this.timeline.hover = null;
        this.timeline.paint();
        this.update();
      });
      document.addEventListener("keydown", (e) => this.key(e));
      new ResizeObserver(() => this.v && this.timeline.render()).observe(this.canvas);
    }

    load(v) {
      this.v = v;
      this.t = 0;
      this.heading.textContent = v.name;
      this.heading.title = v.id;
      this.media.replaceChildren();
      this.video = null;
      if (v.src && v.unit === "s") {
        const video = el("video", { class: "tp-video", id: "video", controls: true,
          preload: "auto", muted: true, playsinline: true, src: v.src });
        video.muted = true;
        const update = () => this.update();
        for (const ev of ["timeupdate", "seeking", "seeked", "loadedmetadata", "pause"]) {
          video.addEventListener(ev, update);
        }
        video.addEventListener("play", () => this.follow());
        video.addEventListener("error", () => {
          if (this.video !== video) return;
          const t = video.currentTime;
          this.video = null; // the timeline goes on as a cursor
          this.t = t;
          this.media.replaceChildren(el("div", { class: "tp-note", id: "no-video",
            text: "The video could not be played here (" + decodeURI(v.src) + "): open this " +
              "page from its folder, or serve that folder's parent with tpwng view --serve." }));
          this.update();
        });
        this.video = video;
        this.media.append(video);
      } else {
        this.media.append(el("div", { class: "tp-note", id: "no-video",
          text: v.note || "No video to show: timeline only." }));
      }
      this.timeline.setTrack(v);
      this.fillLegend();
      this.fillChips();
      this.update();
    }

    fillLegend() {
      const v = this.v, items = [
        ["anomaly score", colour("--score")],
        ["detected (score \u2265 threshold)", "rgba(255, 127, 14, 0.45)"],
      ];
      if (v.truth) items.push(["ground truth", colour("--truth")]);
      this.legend.replaceChildren(...items.map(([name, c]) =>
        el("span", {}, el("span", { class: "sw", style: "background:" + c }), name)));
      for (const c of v.curves) {
        const box = el("input", { type: "checkbox", checked: c.shown });
        box.addEventListener("change", () => { c.shown = box.checked; this.timeline.render(); });
        this.legend.append(el("label", { title: "class probability" }, box,
          el("span", { class: "sw", style: "background:" + c.colour }), "p(" + c.name + ")"));
      }
    }

    fillChips() {
      const v = this.v, chips = [];
      v.detected.forEach((iv, k) => chips.push(el("span", { class: "tp-chip", "data-kind":
        "detected", "data-index": k, title: "detected interval: seek to its start",
        onclick: () => this.seek(iv[0] / v.rate) },
        "\u25B6 " + fmtSpan(v, iv) + " \u00B7 max " + intervalMax(v, iv).toFixed(2))));
      (v.truth || []).forEach((iv, k) => chips.push(el("span", { class: "tp-chip truth",
        "data-kind": "truth", "data-index": k, title: "true interval: seek to its start",
        onclick: () => this.seek(iv[0] / v.rate) }, "truth " + fmtSpan(v, iv))));
      if (!v.detected.length) {
        chips.unshift(el("span", { class: "tp-dim", text: "no detected interval" }));
      }
      this.chips.replaceChildren(...chips);
    }

    now() { return this.video ? this.video.currentTime : this.t; }

    seek(t) {
      if (!this.v) return;
      t = clamp(t, 0, this.v.total);
      if (this.video) this.video.currentTime = t;
      else this.t = t;
      this.update();
    }

    follow() {
      const step = () => {
        this.update();
        if (this.video && !this.video.paused && !this.video.ended) requestAnimationFrame(step);
      };
      requestAnimationFrame(step);
    }

    update() {
      if (!this.v) return;
      const t = this.now();
      this.timeline.setTime(t);
      if (this.timeline.hover === null) this.show(t, false);
    }

    show(t, hovering) {
      const v = this.v, i = snippetAt(v, t);
      let text = (hovering ? "at " : "") + fmtTime(v, t) + " of " + fmtLength(v) +
        " \u00B7 snippet " + (i + 1) + " of " + v.values.length + " \u00B7 score " +
        v.values[i].toFixed(3);
      if (v.curves.length) {
        let best = v.curves[0];
        for (const c of v.curves) if (c.values[i] > best.values[i]) best = c;
        text += " \u00B7 most likely " + best.name + " (" + best.values[i].toFixed(2) + ")";
      }
      this.readout.textContent = text;
    }

    /** Seek to the start of the next (dir 1) or previous (-1) interval of a list. */
    jump(list, dir) {
      const v = this.v;
      if (!v || !list || !list.length) return false;
      const t = this.now(), eps = (0.5 * v.stride) / v.rate;
      const starts = list.map((iv) => iv[0] / v.rate);
      let target = null;
      if (dir > 0) target = starts.find((s) => s > t + eps);
      else for (const s of starts) if (s < t - eps) target = s;
      if (target === null || target === undefined) return false;
      this.seek(target);
      return true;
    }

    key(e) {
      if (e.ctrlKey || e.metaKey || e.altKey || !this.v) return;
      const tag = (e.target && e.target.tagName) || "";
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
      const actions = {
        n: () => this.jump(this.v.detected, 1), p: () => this.jump(this.v.detected, -1),
        N: () => this.jump(this.v.truth, 1), P: () => this.jump(this.v.truth, -1),
      };
      if (actions[e.key]) {
        actions[e.key]();
        e.preventDefault();
      }
    }
  }

  // ------------------------------------------------------------------ pages

  function lazyMinis(minis) {
    const drawn = new Set();
    const io = new IntersectionObserver((entries) => {
      for (const en of entries) {
        const m = minis.get(en.target);
        if (en.isIntersecting && !drawn.has(m)) {
          m.timeline.setTrack(m.v);
          drawn.add(m);
        }
      }
    }, { rootMargin: "200px" });
    for (const c of minis.keys()) io.observe(c);
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => drawn.forEach((m) => m.timeline.render()), 100);
    });
  }

  function miniCanvas(v, minis) {
    const c = el("canvas", { class: "tp-mini" });
    minis.set(c, { v, timeline: new Timeline(c, true) });
    return c;
  }

  function videoPage(main) {
    const v = DATA.videos[0];
    const player = new Player(el("section"));
    main.append(player.root);
    if (DATA.files && DATA.files.length) {
      main.append(el("p", { class: "tp-help" }, "Files: ", ...DATA.files.flatMap((f, k) =>
        [k ? ", " : "", el("a", { href: f.href, text: f.name })])));
    }
    player.load(v);
    return { player };
  }

  function folderPage(main) {
    const minis = new Map();
    const head = el("tr", {}, ...["", "video", "duration", "intervals", "anomalous", "max score",
      "timeline"].map((h) => el("th", { text: h })));
    const rows = DATA.videos.map((v, k) => {
      if (v.error) {
        return el("tr", { "data-id": v.id, class: "error" }, el("td", { text: k + 1 }),
          el("td", { class: "name", text: v.name }),
          el("td", { colspan: 5, class: "tp-bad", text: v.error }));
      }
      const link = el("a", { href: v.page }, ...breakable(v.name));
      return el("tr", { "data-id": v.id, onclick: (e) => {
        if (e.target.tagName !== "A") location.href = v.page;
      } },
      el("td", {}, v.thumb ? el("img", { class: "thumb", src: v.thumb, alt: "" }) : null),
      el("td", { class: "name" }, link),
      el("td", { class: "num", text: fmtLength(v) }),
      el("td", { class: "num", text: v.detected.length }),
      el("td", { class: "num", text: fmtTime(v, v.stats.anomalous_s || 0) }),
      el("td", { class: "num", text: fmtNum(v.stats.max, 3) }),
      el("td", { class: "tl" }, miniCanvas(v, minis)));
    });
    const table = el("table", { class: "tp-table", id: "videos" }, el("thead", {}, head),
      el("tbody", {}, ...rows));
    main.append(el("p", { class: "tp-help", text: "Sorted by highest score. Click a video to " +
      "watch it with its timeline." }), table);
    lazyMinis(minis);
    return {};
  }

  const SORTS = {
    auc: { dir: 1, label: "AUC, worst first", get: (v) => v.stats.auc },
    false_alarms: { dir: -1, label: "false alarms, most first", get: (v) => v.stats.false_alarms },
    missed: { dir: -1, label: "missed frames, most first", get: (v) => v.stats.missed },
    max: { dir: -1, label: "highest score first", get: (v) => v.stats.max },
    duration: { dir: -1, label: "longest first", get: (v) => v.frames },
    name: { dir: 1, label: "name", get: (v) => v.name },
  };

  function compare(key, dir) {
    const get = SORTS[key].get;
    return (a, b) => {
      const x = get(a), y = get(b);
      const nx = x === null || x === undefined, ny = y === null || y === undefined;
      if (nx !== ny) return nx ? 1 : -1; // videos without a value last, either way
      if (!nx && x !== y) return (x < y ? -1 : 1) * dir;
      return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
    };
  }

  function testSetPage(main) {
    const minis = new Map(), byId = new Map();
    const side = el("aside", { class: "tp-side" });
    const player = new Player(el("section"));
    side.append(player.root);
    const columns = [["#", null], ["video", "name"], ["classes", null], ["length", "duration"],
      ["AUC", "auc", "frame AUC of the video (where it has both normal and anomalous frames)"],
      ["false alarms", "false_alarms", "frames scored \u2265 threshold outside the truth"],
      ["missed", "missed", "true anomalous frames scored below the threshold"],
      ["max", "max", "highest snippet score"], ["score / truth", null]];
    const ths = columns.map(([h, key, about]) => el("th", { "data-key": key, text: h,
      title: key ? (about ? about + "; " : "") + "click to sort" : null }));
    const tbody = el("tbody");
    let selected = null;
    const select = (v, t) => {
      if (selected) selected.row.classList.remove("sel");
      selected = v;
      v.row.classList.add("sel");
      player.load(v);
      if (t !== undefined) player.seek(t);
      try {
        history.replaceState(null, "", "#" + encodeURIComponent(v.id));
      } catch (err) {
        // an embedded copy (a data: URL, as in a Snakemake report) has no history to change
      }
    };
    DATA.videos.forEach((v, k) => {
      byId.set(v.id, v);
      const s = v.stats, mini = miniCanvas(v, minis);
      mini.addEventListener("click", (e) => {
        e.stopPropagation();
        const tl = minis.get(mini).timeline;
        select(v, tl.v ? tl.timeAt(e.offsetX) : 0);
      });
      v.row = el("tr", { "data-id": v.id, onclick: () => select(v) },
        el("td", { class: "num tp-dim", text: k + 1 }),
        el("td", { class: "name", title: v.name }, ...breakable(v.name)),
        el("td", { text: (v.classes || []).join(", ") }),
        el("td", { class: "num", text: fmtLength(v) }),
        el("td", { class: "num", text: fmtNum(s.auc, 3),
          title: s.auc === null ? "no AUC: the video's frames are all of one class" : null }),
        framesCell(v, s.false_alarms),
        framesCell(v, s.missed),
        el("td", { class: "num", text: fmtNum(s.max, 3) }),
        el("td", { class: "tl" }, mini));
      tbody.append(v.row);
    });
    const chooser = el("select", { id: "sort" }, ...Object.entries(SORTS).map(([k, s]) =>
      el("option", { value: k + ":" + s.dir, text: s.label })),
    el("option", { value: "", text: "by the column clicked", disabled: true }));
    const filter = el("input", { id: "filter", type: "search", placeholder: "filter by name or " +
      "class", size: 22 });
    const count = el("span", { class: "tp-dim" });
    const sort = (key, dir) => {
      dir = dir || SORTS[key].dir;
      const order = DATA.videos.slice().sort(compare(key, dir));
      tbody.append(...order.map((v) => v.row));
      tbody.dataset.sort = key + ":" + dir;
      ths.forEach((th, k) => {
        const on = columns[k][1] === key;
        th.classList.toggle("sorted", on);
        th.classList.toggle("asc", on && dir > 0);
      });
      const opt = key + ":" + dir;
      chooser.value = [...chooser.options].some((o) => o.value === opt) ? opt : "";
      return order.map((v) => v.id);
    };
    ths.forEach((th, k) => {
      const key = columns[k][1];
      if (!key) return;
      th.addEventListener("click", () => {
        const [cur, dir] = (tbody.dataset.sort || "").split(":");
        sort(key, cur === key ? -Number(dir) : SORTS[key].dir);
      });
    });
    chooser.addEventListener("change", () => {
      const [key, dir] = chooser.value.split(":");
      sort(key, Number(dir));
    });
    const applyFilter = () => {
      const q = filter.value.trim().toLowerCase();
      let shown = 0;
      for (const v of DATA.videos) {
        const hit = !q || v.name.toLowerCase().includes(q) ||
          (v.classes || []).some((c) => c.toLowerCase().includes(q));
        v.row.style.display = hit ? "" : "none";
        shown += hit;
      }
      count.textContent = shown + " of " + DATA.videos.length + " videos";
    };
    filter.addEventListener("input", applyFilter);
    const left = el("div", {}, el("div", { class: "tp-tools" },
      el("label", {}, "sort: ", chooser), filter, count),
    el("div", { class: "tp-scroll" }, el("table", { class: "tp-table", id: "videos" },
      el("thead", {}, el("tr", {}, ...ths)), tbody)));
    main.append(el("div", { class: "tp-split" }, left, side));
    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || !selected) return;
      const tag = (e.target && e.target.tagName) || "";
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
      if (e.key !== "j" && e.key !== "k") return;
      const rows = [...tbody.rows].filter((r) => r.style.display !== "none");
      const at = rows.indexOf(selected.row) + (e.key === "j" ? 1 : -1);
      if (at >= 0 && at < rows.length) {
        select(byId.get(rows[at].dataset.id));
        rows[at].scrollIntoView({ block: "nearest" });
      }
      e.preventDefault();
    });
    sort("auc", 1);
    applyFilter();
    lazyMinis(minis);
    let wanted = location.hash.slice(1);
    try { wanted = decodeURIComponent(wanted); } catch (e) { /* a malformed %-escape: as is */ }
    if (DATA.videos.length) select(byId.get(wanted) || byId.get(tbody.rows[0].dataset.id));
    return { player, sort, select: (id, t) => select(byId.get(id), t),
      order: () => [...tbody.rows].map((r) => r.dataset.id) };
  }

  const main = document.getElementById("tp-main");
  DATA.videos.forEach((v) => v.error || prepare(v));
  const pages = { video: videoPage, folder: folderPage, testset: testSetPage };
  const api = pages[DATA.kind](main);
  window.tpwngViewer = Object.assign(api, { kind: DATA.kind, videos: DATA.videos, ready: true });
})();
