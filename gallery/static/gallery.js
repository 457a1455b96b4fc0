/* saliency gallery: overview table (sort, filter, pages) and the detail view.
 *
 * Data comes from the JSON block #gallery-data. Every string from it is shown with
 * textContent / Text nodes or set as a property (src, alt, title); nothing is parsed as HTML.
 */
(function () {
  "use strict";

  var data = JSON.parse(document.getElementById("gallery-data").textContent);
  var items = data.items;
  var methods = data.methods;
  var byId = new Map(items.map(function (item) { return [item.id, item]; }));
  var collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  var THUMB_BOX = 104;

  var state = {
    text: "", label: "", status: "", minConfidence: 0, sort: "path",
    page: 0, pageSize: data.pageSize || 50, current: null, opener: null
  };
  var blend = methods.map(function () { return 50; });
  var signed = methods.map(function () { return false; });
  var view = items.slice();

  function $(id) { return document.getElementById(id); }

  /* Create an element. props: text, class, dataset, on<event>, else a DOM property. */
  function h(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (key) {
      var value = props[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
      else if (key in node) node[key] = value;
      else node.setAttribute(key, String(value));
    });
    [].concat(children === undefined ? [] : children).forEach(function (child) {
      if (child !== null && child !== undefined) node.append(child);
    });
    return node;
  }

  function percent(p) { return (100 * p).toFixed(p >= 0.995 || p < 0.1 ? 1 : 0) + " %"; }
  function classText(score) {
    if (!score) return "—";
    if (score.label !== null && score.label !== undefined) return score.label;
    return score.index === null || score.index === undefined ? "—" : "class " + score.index;
  }
  function confidence(item) {
    var p = item.prediction && item.prediction.probability;
    return typeof p === "number" ? p : null;
  }
  function labelOf(item) { return item.prediction ? classText(item.prediction) : ""; }

  /* An <img> of a stored picture, scaled to fit a box of `box` CSS pixels (0: natural size). */
  function image(picture, alt, className, box, lazy) {
    var scale = box ? box / Math.max(picture.width, picture.height) : 1;
    return h("img", {
      loading: lazy ? "lazy" : "eager", decoding: "async", class: className, alt: alt,
      width: Math.max(1, Math.round(picture.width * scale)),
      height: Math.max(1, Math.round(picture.height * scale)),
      src: picture.url
    });
  }

  /* Tile `index` of the input's thumbnail strip, scaled to fit a box of `box` CSS pixels. */
  function tile(item, index, alt, box) {
    var strip = item.strip;
    var scale = box / Math.max(strip.width, strip.height);
    var frame = h("span", { class: "tile" });
    frame.style.width = Math.round(strip.width * scale) + "px";
    frame.style.height = Math.round(strip.height * scale) + "px";
    var full = strip.stride * (strip.count - 1) + strip.width;
    var img = h("img", {
      loading: "lazy", decoding: "async", class: "thumb", alt: alt,
      width: Math.round(full * scale), height: Math.round(strip.height * scale), src: strip.url
    });
    img.style.marginLeft = (-index * strip.stride * scale).toFixed(2) + "px";
    frame.append(img);
    return frame;
  }

  /* A path as text, with line-break opportunities after each "/". */
  function pathText(path) {
    var parts = String(path).split("/");
    var nodes = [];
    parts.forEach(function (part, k) {
      nodes.push(k < parts.length - 1 ? part + "/" : part);
      if (k < parts.length - 1) nodes.push(h("wbr"));
    });
    return nodes;
  }

  function note(text, title) { return h("span", { class: "cell-note", text: text, title: title }); }

  /* ---------- overview ---------- */

  function matches(item) {
    if (state.status && item.status !== state.status) return false;
    if (state.label && (!item.prediction || item.prediction.label !== state.label)) return false;
    var p = confidence(item);
    if (state.minConfidence > 0 && (p === null || 100 * p < state.minConfidence)) return false;
    if (state.text) {
      var needle = state.text.toLowerCase();
      var hay = (item.path + "\n" + labelOf(item)).toLowerCase();
      if (hay.indexOf(needle) < 0) return false;
    }
    return true;
  }

  function byPath(a, b) { return collator.compare(a.path, b.path) || a.id - b.id; }
  var comparators = {
    "path": byPath,
    "label": function (a, b) {
      var la = labelOf(a), lb = labelOf(b);
      if (!la !== !lb) return la ? -1 : 1;
      return collator.compare(la, lb) || byPath(a, b);
    },
    "confidence-desc": function (a, b) {
      var pa = confidence(a), pb = confidence(b);
      return (pb === null ? -1 : pb) - (pa === null ? -1 : pa) || byPath(a, b);
    },
    "confidence-asc": function (a, b) {
      var pa = confidence(a), pb = confidence(b);
      return (pa === null ? 2 : pa) - (pb === null ? 2 : pb) || byPath(a, b);
    },
    "status": function (a, b) {
      return (a.status === "error" ? 0 : 1) - (b.status === "error" ? 0 : 1) || byPath(a, b);
    }
  };

  function update(resetPage) {
    view = items.filter(matches).sort(comparators[state.sort] || byPath);
    if (resetPage) state.page = 0;
    var pages = Math.max(1, Math.ceil(view.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.pageSize;
    var shown = view.slice(start, start + state.pageSize);
    $("rows").replaceChildren.apply($("rows"), shown.length ? shown.map(row) : [emptyRow()]);
    var range = shown.length ? (start + 1) + "–" + (start + shown.length) : "0";
    var filtered = view.length < items.length ? " (filtered from " + items.length + ")" : "";
    $("count").textContent = "Showing " + range + " of " + view.length + " images" + filtered;
    $("page-info").textContent = "Page " + (state.page + 1) + " of " + pages;
    $("page-prev").disabled = state.page === 0;
    $("page-next").disabled = state.page >= pages - 1;
    document.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.setAttribute("aria-sort", th.dataset.sort === state.sort
        ? (state.sort === "confidence-asc" ? "ascending" : state.sort === "confidence-desc" ? "descending" : "ascending")
        : "none");
    });
  }

  function emptyRow() {
    return h("tr", {}, h("td", { class: "empty", colSpan: methods.length + 5, text: "No image matches the filters." }));
  }

  function row(item) {
    var open = function () { openDetail(item.id, this); };
    var cells = [
      h("th", { scope: "row", class: "path" },
        h("button", { type: "button", class: "link", title: "Show details", onclick: open }, pathText(item.path))),
      h("td", { class: "thumb-cell" }, item.strip && item.originalTile !== null
        ? h("button", { type: "button", class: "thumb-button", title: "Show details", onclick: open },
            tile(item, item.originalTile, "original: " + item.path, THUMB_BOX))
        : note("no original", item.originalProblem))
    ];
    methods.forEach(function (method, j) {
      var output = item.methods[j];
      var content;
      if (!output) content = note(item.status === "error" ? "failed" : "—", "no output of " + method.name);
      else if (output.tile === null || !item.strip) content = note("missing", output.problem);
      else content = h("button", { type: "button", class: "thumb-button", title: method.name + ": show details", onclick: open },
        tile(item, output.tile, method.name + " for " + item.path, THUMB_BOX));
      cells.push(h("td", { class: "thumb-cell" }, content));
    });
    cells.push(h("td", { class: "prediction" }, predictionNode(item.prediction)));
    cells.push(h("td", { class: "target", text: classText(item.target) }));
    cells.push(h("td", { class: "status" }, [
      h("span", { class: "badge badge-" + item.status, text: item.status === "error" ? "failed" : item.status }),
      item.error ? h("span", { class: "error-text", text: item.error, title: item.error }) : null
    ]));
    return h("tr", { class: "status-" + item.status, dataset: { id: String(item.id) } }, cells);
  }

  function predictionNode(score) {
    if (!score) return note("—");
    var p = typeof score.probability === "number" ? score.probability : null;
    return h("div", { class: "score" }, [
      h("span", { class: "score-label", text: classText(score) }),
      p === null ? null : bar(p),
      p === null ? null : h("span", { class: "score-value", text: percent(p) })
    ]);
  }

  function bar(p) {
    var fill = h("span", { class: "bar-fill" });
    fill.style.width = (100 * Math.max(0, Math.min(1, p))).toFixed(1) + "%";
    return h("span", { class: "bar", role: "presentation" }, fill);
  }

  function turnPage(delta) {
    state.page += delta;
    update(false);
    var top = $("overview").getBoundingClientRect().top;
    if (top < 0) $("overview").scrollIntoView();
  }

  function bindControls() {
    var labelSelect = $("filter-label");
    data.labels.forEach(function (label) { labelSelect.append(new Option(label, label)); });
    $("controls").addEventListener("submit", function (event) { event.preventDefault(); });
    $("filter-text").addEventListener("input", function (e) { state.text = e.target.value.trim(); update(true); });
    labelSelect.addEventListener("change", function (e) { state.label = e.target.value; update(true); });
    $("filter-status").addEventListener("change", function (e) { state.status = e.target.value; update(true); });
    $("filter-confidence").addEventListener("input", function (e) {
      var value = parseFloat(e.target.value);
      state.minConfidence = isFinite(value) ? value : 0;
      update(true);
    });
    $("sort").addEventListener("change", function (e) { state.sort = e.target.value; update(true); });
    $("page-size").addEventListener("change", function (e) { state.pageSize = parseInt(e.target.value, 10) || 50; update(true); });
    $("page-prev").addEventListener("click", function () { turnPage(-1); });
    $("page-next").addEventListener("click", function () { turnPage(1); });
    document.querySelectorAll("button.sort-button").forEach(function (button) {
      button.addEventListener("click", function () {
        var key = button.dataset.sort;
        if (key === "confidence-desc" && state.sort === "confidence-desc") key = "confidence-asc";
        state.sort = key;
        $("sort").value = key;
        update(true);
      });
    });
  }

  /* ---------- detail view ---------- */

  function navigationList() {
    return view.some(function (item) { return item.id === state.current; }) ? view : items;
  }

  function openDetail(id, opener) {
    var item = byId.get(id);
    if (!item) return;
    if (opener) state.opener = opener;
    state.current = id;
    var list = navigationList();
    var index = list.indexOf(item);
    $("detail-title").textContent = item.path;
    $("detail-position").textContent = (index + 1) + " / " + list.length;
    $("detail-prev").disabled = index <= 0;
    $("detail-next").disabled = index >= list.length - 1;
    $("detail-body").replaceChildren(detailTop(item), methodCards(item));
    var detail = $("detail");
    detail.hidden = false;
    detail.scrollTop = 0;
    document.documentElement.classList.add("detail-open");
    setHash("#image-" + id);
    detail.focus({ preventScroll: true });
  }

  function closeDetail() {
    var detail = $("detail");
    if (detail.hidden) return;
    detail.hidden = true;
    document.documentElement.classList.remove("detail-open");
    $("detail-body").replaceChildren();
    var position = view.findIndex(function (item) { return item.id === state.current; });
    if (position >= 0 && Math.floor(position / state.pageSize) !== state.page) {
      state.page = Math.floor(position / state.pageSize);
      update(false);
    }
    setHash("");
    var rowNode = document.querySelector('tr[data-id="' + state.current + '"]');
    var target = state.opener && document.contains(state.opener) ? state.opener
      : rowNode && rowNode.querySelector("button");
    state.current = null;
    state.opener = null;
    if (target) target.focus();
    if (rowNode) rowNode.scrollIntoView({ block: "nearest" });
  }

  function step(delta) {
    if (state.current === null) return;
    var list = navigationList();
    var index = list.indexOf(byId.get(state.current)) + delta;
    if (index >= 0 && index < list.length) openDetail(list[index].id);
  }

  function setHash(hash) {
    try {
      history.replaceState(null, "", hash || location.pathname + location.search);
    } catch (error) { /* some file:// setups refuse; the view still works */ }
  }

  function detailTop(item) {
    var original = item.original
      ? h("figure", { class: "original" }, [
          image(item.original, "original: " + item.path, "original-image", 0, false),
          h("figcaption", { text: "Original" + (item.width && item.height ? " · " + item.width + " × " + item.height + " px" : "") })
        ])
      : h("figure", { class: "original missing" }, h("figcaption", { text: item.originalProblem || "The original image is not available." }));
    var facts = h("dl", { class: "facts" });
    function fact(name, value) { facts.append(h("div", {}, [h("dt", { text: name }), h("dd", {}, value)])); }
    fact("File", item.path);
    fact("Status", h("span", { class: "badge badge-" + item.status, text: item.status === "error" ? "failed" : item.status }));
    if (item.error) fact("Error", h("pre", { class: "message", text: item.error }));
    fact("Prediction", predictionNode(item.prediction));
    fact("Target", classText(item.target));
    var top = h("ol", { class: "top5" }, item.top5.map(function (score) {
      return h("li", {}, predictionNode(score));
    }));
    return h("div", { class: "detail-top" }, [
      original,
      h("div", { class: "detail-facts" }, [
        facts,
        h("h3", { text: "Top-5 predictions" }),
        item.top5.length ? top : h("p", { class: "cell-note", text: "none recorded" })
      ])
    ]);
  }

  function methodCards(item) {
    return h("div", { class: "method-cards" }, methods.map(function (method, j) {
      return methodCard(item, method, j, item.methods[j]);
    }));
  }

  function methodCard(item, method, j, output) {
    var header = h("h3", {}, [
      h("a", { href: "#" + method.anchor, text: method.name, title: method.summary || "", onclick: closeDetail }),
      output && typeof output.seconds === "number" ? h("span", { class: "time", text: output.seconds.toFixed(output.seconds < 10 ? 2 : 1) + " s" }) : null
    ]);
    if (!output || (!output.overlay && !output.layers)) {
      var why = output ? output.problem : item.status === "error" ? "This method did not finish." : "No output.";
      return h("section", { class: "card", dataset: { method: method.name } }, [header, h("p", { class: "cell-note", text: why || "No output." })]);
    }
    var hasRaw = Boolean(output.layers);
    var frame = item.original || output.overlay || output.layers;
    var stack = h("div", { class: "stack" + (item.original ? "" : " no-original") });
    stack.style.aspectRatio = frame.width + " / " + frame.height;
    if (item.original) stack.append(image(item.original, "", "base", 0, false));
    var layer = hasRaw
      ? sheetLayer(output.layers, method.name + " heatmap for " + item.path, signed[j])
      : h("div", { class: "layer" }, image(output.overlay, method.name + " overlay for " + item.path, "overlay", 0, false));
    stack.append(layer);

    var valueText = h("output", { class: "blend-value" });
    var slider = h("input", {
      type: "range", min: 0, max: 100, step: 1, value: String(blend[j]), class: "blend",
      title: hasRaw ? "0 %: the image · 100 %: the heatmap" : "0 %: the image · 100 %: the stored overlay"
    });
    slider.setAttribute("aria-label", "Blend image and " + (hasRaw ? "heatmap" : "overlay") + " for " + method.name);
    function applyBlend() {
      blend[j] = Number(slider.value);
      layer.style.opacity = String(blend[j] / 100);
      valueText.textContent = blend[j] + " %";
    }
    slider.addEventListener("input", applyBlend);
    applyBlend();

    var toggle = h("input", { type: "checkbox", class: "sign-toggle", checked: hasRaw && signed[j], disabled: !hasRaw });
    var toggleTitle = hasRaw ? "Show positive (red) and negative (blue) attributions"
      : "The signed view needs raw attributions: run saliency explain with --save-raw";
    var scale = h("div", { class: "scale" });
    toggle.addEventListener("change", function () {
      signed[j] = toggle.checked;
      showCell(layer, output.layers, signed[j]);
      fillScale(scale, output, j, hasRaw);
    });
    fillScale(scale, output, j, hasRaw);

    var controls = h("div", { class: "controls" }, [
      h("label", { class: "blend-label" }, [h("span", { text: "Image" }), slider, h("span", { text: hasRaw ? "Heatmap" : "Overlay" })]),
      valueText,
      h("label", { class: "sign-label" + (hasRaw ? "" : " disabled"), title: toggleTitle }, [toggle, h("span", { text: "Signed view (+/−)" })])
    ]);

    var options = h("p", { class: "options" });
    var shown = method.options || method.defaults || {};
    var names = Object.keys(shown);
    options.append(h("span", { class: "options-title", text: method.options ? "Options: " : "Options (defaults): " }));
    if (!names.length) options.append("none");
    names.forEach(function (name, k) {
      options.append(h("code", { text: name + "=" + shown[name] }));
      if (k < names.length - 1) options.append(", ");
    });

    return h("section", { class: "card", dataset: { method: method.name } }, [
      header, stack, controls, scale, options,
      output.problem ? h("p", { class: "cell-note", text: output.problem }) : null
    ]);
  }

  /* One cell of an input's heatmap sheet, stretched over the stack (see layers.py). */
  function sheetLayer(layers, alt, isSigned) {
    var img = h("img", { decoding: "async", alt: alt, width: layers.sheetWidth, height: layers.sheetHeight, src: layers.url });
    img.style.width = (100 * layers.sheetWidth / layers.width) + "%";
    img.style.height = (100 * layers.sheetHeight / layers.height) + "%";
    var frame = h("div", { class: "layer sheet" }, img);
    showCell(frame, layers, isSigned);
    return frame;
  }

  function showCell(frame, layers, isSigned) {
    var cell = isSigned ? layers.signed : layers.absolute;
    var img = frame.firstChild;
    img.style.left = (-100 * cell[0] / layers.width) + "%";
    img.style.top = (-100 * cell[1] / layers.height) + "%";
    frame.dataset.view = isSigned ? "signed" : "absolute";
  }

  function fillScale(scale, output, j, hasRaw) {
    var isSigned = hasRaw && signed[j];
    var scaleValue = output.layers ? output.layers.scale : null;
    var value = typeof scaleValue === "number" ? Number(scaleValue.toPrecision(3)) : null;
    var ticks = isSigned
      ? [value === null ? "−max" : "−" + value, "0", value === null ? "+max" : "+" + value]
      : [hasRaw ? "0" : "low", value === null ? "high" : "≥ " + value];
    var caption = isSigned ? "signed attribution: − against · 0 · + for the target"
      : hasRaw ? "|attribution|: low → high relevance" : "relative importance (stored overlay), low → high";
    scale.replaceChildren(
      h("img", { class: "scale-bar", alt: "colour scale", width: 256, height: 1, src: isSigned ? data.colourBars.signed : data.colourBars.heatmap }),
      h("div", { class: "ticks" }, ticks.map(function (t) { return h("span", { text: t }); })),
      h("div", { class: "scale-caption", text: caption })
    );
  }

  function bindDetail() {
    $("detail-close").addEventListener("click", closeDetail);
    $("detail-prev").addEventListener("click", function () { step(-1); });
    $("detail-next").addEventListener("click", function () { step(1); });
    document.addEventListener("keydown", function (event) {
      if ($("detail").hidden || event.altKey || event.ctrlKey || event.metaKey) return;
      var tag = event.target && event.target.tagName;
      var typing = tag === "INPUT" && event.target.type !== "checkbox" || tag === "SELECT" || tag === "TEXTAREA";
      if (event.key === "Escape") { event.preventDefault(); closeDetail(); }
      else if (event.key === "ArrowLeft" && !typing) { event.preventDefault(); step(-1); }
      else if (event.key === "ArrowRight" && !typing) { event.preventDefault(); step(1); }
    });
    window.addEventListener("hashchange", fromHash);
  }

  function fromHash() {
    var match = /^#image-(\d+)$/.exec(location.hash);
    if (match && byId.has(Number(match[1]))) openDetail(Number(match[1]));
    else if (!$("detail").hidden) closeDetail();
  }

  bindControls();
  bindDetail();
  update(true);
  fromHash();
  document.documentElement.dataset.galleryReady = "true";
})();
