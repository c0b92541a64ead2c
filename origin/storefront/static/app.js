// The storefront: catalog, player and purchases, over the origin's public API.
//
// The player is hls.js. A preview session plays until the edge responds with 402
// (preview-ended) for the first segment past the preview; the page then
// stops loading and shows the paywall where the buffered video ends. When a
// purchase of the title is granted, the edge learns it from the origin's
// event feed and serves the same session's URIs, so the page only resumes
// loading; a refund locks them again.
"use strict";

// Decline codes of the sandbox and Stripe, as the viewer reads them.
const DECLINE_MESSAGES = {
  generic_decline: "the card was declined by its issuer",
  insufficient_funds: "the card has insufficient funds",
  expired_card: "the card has expired",
  payment_intent_authentication_failure: "the bank's authentication failed",
};
const CARD_NAMES = {
  pm_card_visa: "Visa 4242",
  pm_card_chargeDeclined: "Visa 0002",
  pm_card_authenticationRequired: "Visa 3184",
};
const SETTLED = new Set(["granted", "declined", "failed", "canceled", "refunded"]);
const POLL_MS = 250;
const RETRY_MS = 3000;
// Tries of resuming or re-locking while the edge has not yet received the
// event of a grant or a refund, RESUME_MS apart.
const RESUME_TRIES = 40;
const RESUME_MS = 250;
// Shorter than hls.js's default of 30 s, so a refund stops playback soon.
const BUFFER_SECONDS = 6;

const $ = (id) => document.getElementById(id);
const video = $("video");

// The page's state; the browser test reads it as window.storefront.
const state = {
  viewer: null,
  catalog: [],
  item: null,
  session: null,
  hls: null,
  // The edge refused a segment past the preview, so loading stopped.
  locked: false,
  // Why the paywall shows: "preview" or "refunded".
  lockReason: "preview",
  resumeTries: 0,
  relockTries: 0,
  // The key, title and card of a purchase request that got no response.
  unansweredBuy: null,
  // Unlocked, but playback has not passed the preview's end yet.
  resuming: false,
  purchases: new Map(),
  polling: new Set(),
  banners: new Map(),
  errors: [],
  events: [],
};
window.storefront = state;

function note(name, detail = {}) {
  state.events.push({ name, at: performance.now(), time: video.currentTime, ...detail });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Banners --------------------------------------------------------------------

function showBanner(kind, text) {
  state.banners.set(kind, text);
  renderBanner();
}

function clearBanner(kind) {
  if (state.banners.delete(kind)) renderBanner();
}

function renderBanner() {
  const banner = $("banner");
  const texts = [...state.banners.values()];
  banner.hidden = texts.length === 0;
  banner.textContent = texts.join(" ");
}

// The origin's API -----------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, problem) {
    super(message);
    this.status = status;
    this.problem = problem;
  }

  get slug() {
    const type = this.problem && this.problem.type;
    return typeof type === "string" ? type.split(":").pop() : null;
  }
}

async function api(method, path, body, { idempotent = false, key = null } = {}) {
  const headers = { Accept: "application/json" };
  if (state.viewer) headers.Authorization = `Bearer ${state.viewer.viewer_token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // One key per action: the origin runs each purchase or refund once,
  // however often the same request is sent.
  if (idempotent) headers["Idempotency-Key"] = key || crypto.randomUUID();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    showBanner(
      "origin",
      `The origin (${location.host}) cannot be reached, so the catalog and ` +
        "purchases may be out of date until it answers again.",
    );
    throw new ApiError(`the origin cannot be reached (${error.message})`, 0, null);
  }
  clearBanner("origin");
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = (data && (data.detail || data.title)) || `HTTP ${response.status}`;
    throw new ApiError(detail, response.status, data);
  }
  return { status: response.status, data };
}

// Runs ``call`` as the viewer, creating a viewer when there is none or when
// the origin no longer has the stored one (a new demo store, for example).
async function asViewer(call) {
  if (!state.viewer) await newViewer();
  try {
    return await call();
  } catch (error) {
    if (error.status !== 401) throw error;
    await newViewer();
    return call();
  }
}

async function newViewer() {
  state.viewer = null;
  const { data } = await api("POST", "/v1/viewers");
  state.viewer = data;
  state.purchases.clear();
  localStorage.setItem("segmentgate.viewer", JSON.stringify(data));
  renderViewer();
  renderPurchases();
}

function loadStoredViewer() {
  try {
    const stored = JSON.parse(localStorage.getItem("segmentgate.viewer") || "null");
    if (stored && stored.viewer_id && stored.viewer_token) state.viewer = stored;
  } catch {
    localStorage.removeItem("segmentgate.viewer");
  }
  renderViewer();
}

function renderViewer() {
  $("viewer").textContent = state.viewer
    ? `Viewer ${state.viewer.viewer_id}`
    : "no viewer yet";
}

// Catalog --------------------------------------------------------------------

async function loadCatalog() {
  for (;;) {
    try {
      const { data } = await api("GET", "/v1/catalog");
      state.catalog = data.items;
      renderCatalog();
      return;
    } catch (error) {
      $("catalog").replaceChildren(listItem(`The catalog cannot be loaded: ${error.message}.`));
      await sleep(RETRY_MS);
    }
  }
}

function listItem(text) {
  const item = document.createElement("li");
  item.className = "muted";
  item.textContent = text;
  return item;
}

function priceText(item) {
  const policy = item.policy;
  if (policy.kind !== "purchase") return "Free";
  const preview = policy.preview_seconds ? `, ${policy.preview_seconds} s preview` : "";
  return `${policy.price.amount} ${policy.price.currency}${preview}`;
}

function renderCatalog() {
  const entries = state.catalog.map((item) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.contentId = item.content_id;
    button.setAttribute("aria-pressed", String(state.item === item));
    const title = document.createElement("strong");
    title.textContent = item.title;
    const price = document.createElement("span");
    price.className = "price";
    price.textContent = priceText(item);
    button.append(title, price);
    button.addEventListener("click", () => play(item, 0));
    const entry = document.createElement("li");
    entry.append(button);
    return entry;
  });
  $("catalog").replaceChildren(...(entries.length ? entries : [listItem("The catalog is empty.")]));
}

// Player ---------------------------------------------------------------------

function showOverlay(title, text, action = null) {
  $("overlay").hidden = false;
  $("overlay").dataset.paywall = "";
  $("overlay-title").textContent = title;
  $("overlay-text").textContent = text;
  const button = $("overlay-action");
  button.hidden = action === null;
  if (action !== null) {
    button.textContent = action.label;
    button.onclick = action.run;
  }
  note("overlay", { title });
}

function hideOverlay() {
  $("overlay").hidden = true;
  $("overlay").dataset.paywall = "";
}

function ownsItem() {
  const item = state.item;
  if (!item || item.policy.kind !== "purchase") return true;
  return [...state.purchases.values()].some(
    (purchase) =>
      purchase.content_id === item.content_id &&
      purchase.status === "granted" &&
      !purchase.refund_requested_at,
  );
}

function renderAccess() {
  const badge = $("access");
  if (!state.item) {
    badge.textContent = "";
    badge.className = "badge";
    return;
  }
  const full = ownsItem();
  const preview = state.item.policy.preview_seconds || 0;
  badge.textContent = full ? "Full video" : `Preview: first ${preview} s`;
  badge.className = full ? "badge full" : "badge preview";
  $("buy").hidden = full;
  const price = state.item.policy.price;
  if (price) $("buy-button").textContent = `Buy for ${price.amount} ${price.currency}`;
}

async function play(item, startAt) {
  state.item = item;
  state.locked = false;
  state.lockReason = "preview";
  renderCatalog();
  renderAccess();
  $("now-playing").textContent = item.title;
  hideOverlay();
  let session;
  try {
    session = (
      await asViewer(() =>
        api("POST", "/v1/playback-sessions", { content_id: item.content_id }),
      )
    ).data;
  } catch (error) {
    showOverlay("The player cannot start", `No playback session: ${error.message}.`, {
      label: "Try again",
      run: () => play(item, startAt),
    });
    return;
  }
  state.session = session;
  note("session", { preview: session.preview });
  attach(session.playlist_url, startAt);
}

function attach(playlistUrl, startAt) {
  if (state.hls) state.hls.destroy();
  state.hls = null;
  if (typeof Hls === "undefined") {
    showOverlay(
      "The player is not installed",
      "hls.js did not load from the origin. `make demo` installs it with npm.",
    );
    return;
  }
  if (!Hls.isSupported()) {
    showOverlay("This browser cannot play HLS", "hls.js needs Media Source Extensions.");
    return;
  }
  const hls = new Hls({
    startPosition: startAt,
    maxBufferLength: BUFFER_SECONDS,
    maxMaxBufferLength: BUFFER_SECONDS,
  });
  state.hls = hls;
  hls.on(Hls.Events.ERROR, onPlayerError);
  hls.on(Hls.Events.FRAG_BUFFERED, (event, data) => {
    if (data.frag.type !== "main") return;
    note("fragment", { start: data.frag.start });
    clearBanner("edge");
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    applySpeed();
    video.play().catch(() =>
      showOverlay("Press play", "The browser did not start the video by itself.", {
        label: "Play",
        run: () => {
          hideOverlay();
          video.play();
        },
      }),
    );
  });
  hls.loadSource(playlistUrl);
  hls.attachMedia(video);
}

function previewEnd() {
  return state.session ? state.session.preview_seconds : 0;
}

// The end of the buffered range that contains the current position.
function bufferedEnd() {
  const ranges = video.buffered;
  for (let i = 0; i < ranges.length; i++) {
    if (ranges.start(i) <= video.currentTime + 0.1 && video.currentTime <= ranges.end(i)) {
      return ranges.end(i);
    }
  }
  return video.currentTime;
}

function responseOf(data) {
  const xhr = data.networkDetails;
  const code = data.response ? data.response.code : xhr && xhr.status;
  let reason = null;
  if (xhr && typeof xhr.getResponseHeader === "function" && xhr.readyState >= 2) {
    reason = xhr.getResponseHeader("Segmentgate-Reason");
  }
  return { code: code || 0, reason };
}

function onPlayerError(event, data) {
  const { code, reason } = responseOf(data);
  const url = data.frag ? data.frag.url : data.url || null;
  state.errors.push({ details: data.details, fatal: data.fatal, code, reason, url });
  if (code === 402) {
    onPaymentRequired();
  } else if (code === 401) {
    stopLoading();
    showOverlay(
      "Your playback session expired",
      "Playback sessions last a limited time. A new one continues from here.",
      { label: "Start a new session", run: () => play(state.item, video.currentTime) },
    );
  } else if (code === 403 || code === 410) {
    stopLoading();
    const text =
      code === 410 ? "This title was withdrawn from the catalog." : "The edge rejected this session.";
    showOverlay("Playback stopped", `${text} (${reason || code})`, {
      label: "Start a new session",
      run: () => play(state.item, video.currentTime),
    });
  } else if (code === 503 || code === 502 || code === 504) {
    edgeTrouble(
      data,
      reason === "origin-unreachable"
        ? "The edge cannot confirm access with the origin right now."
        : `The edge cannot fetch the video right now (${reason || code}).`,
    );
  } else if (
    // Loads that stopLoad() aborted report "aborted" and are no trouble.
    data.type === Hls.ErrorTypes.NETWORK_ERROR &&
    /Load(Error|TimeOut)$/.test(data.details)
  ) {
    edgeTrouble(data, `The edge (${edgeHost()}) cannot be reached.`);
  } else if (data.fatal && data.type === Hls.ErrorTypes.MEDIA_ERROR) {
    state.hls.recoverMediaError();
  } else if (data.fatal) {
    showOverlay("Playback stopped", `The player failed: ${data.details}.`, {
      label: "Start again",
      run: () => play(state.item, video.currentTime),
    });
  }
}

function edgeHost() {
  try {
    return new URL(state.session.playlist_url).host;
  } catch {
    return "edge";
  }
}

// hls.js retries network errors by itself. Once it gives up (a fatal
// error), the page shows a message and starts loading again a few seconds later.
function edgeTrouble(data, text) {
  if (!data.fatal) {
    showBanner("edge", `${text} The player retries.`);
    return;
  }
  showOverlay("Waiting for the edge", `${text} Retrying every ${RETRY_MS / 1000} s.`);
  setTimeout(() => {
    if (!state.hls) return;
    if (state.hls.levels && state.hls.levels.length) {
      hideOverlay();
      state.hls.startLoad(video.currentTime);
      video.play().catch(() => {});
    } else {
      play(state.item, video.currentTime);
    }
  }, RETRY_MS);
}

function stopLoading() {
  if (state.hls) state.hls.stopLoad();
  video.pause();
}

function onPaymentRequired() {
  if (state.hls) state.hls.stopLoad();
  if (ownsItem() && state.resumeTries > 0) {
    // The purchase is granted, but this edge has not received the event
    // yet: try again shortly.
    setTimeout(resume, RESUME_MS);
    return;
  }
  if (!state.locked) note("locked", { reason: state.lockReason });
  state.locked = true;
  checkPaywall();
}

// Shows the paywall once playback reaches the end of what was buffered.
function checkPaywall() {
  if (!state.locked) return;
  if (video.currentTime < bufferedEnd() - 0.25 && !video.ended) return;
  if (!video.paused) video.pause();
  if (!$("overlay").hidden && $("overlay").dataset.paywall === "1") return;
  const price = state.item.policy.price;
  const text =
    state.lockReason === "refunded"
      ? "Your purchase was refunded, so the full video is locked again."
      : `Buy it for ${price.amount} ${price.currency} to keep watching from here.`;
  showOverlay(state.lockReason === "refunded" ? "Refunded" : "The preview has ended", text, {
    label: "Choose a card below",
    run: () => $("buy-button").focus(),
  });
  $("overlay").dataset.paywall = "1";
  note("paywall", { reason: state.lockReason });
}

function unlock() {
  renderAccess();
  state.lockReason = "preview";
  if (!state.locked) return;
  state.locked = false;
  state.resumeTries = 0;
  hideOverlay();
  note("unlock");
  state.resuming = true;
  resume();
}

function resume() {
  if (!state.hls || !ownsItem()) return;
  state.resumeTries += 1;
  if (state.resumeTries > RESUME_TRIES) {
    showOverlay(
      "The edge has not confirmed your purchase yet",
      "The purchase is granted, but the edge still refuses the full video.",
      { label: "Try again", run: () => play(state.item, video.currentTime) },
    );
    return;
  }
  state.hls.startLoad(video.currentTime);
  video.play().catch(() => {});
}

// After a refund: drop what is buffered past the preview, so the edge is
// asked again and responds with 402.
function relock() {
  renderAccess();
  if (!state.hls || !state.item) return;
  state.lockReason = "refunded";
  state.relockTries = 0;
  note("relock");
  flushAhead();
}

function flushAhead() {
  if (state.locked || !state.hls || ownsItem()) return;
  state.relockTries += 1;
  if (state.relockTries > RESUME_TRIES) return;
  const start = Math.max(video.currentTime + 0.5, previewEnd());
  state.hls.trigger(Hls.Events.BUFFER_FLUSHING, {
    startOffset: start,
    endOffset: Number.POSITIVE_INFINITY,
    type: null,
  });
  state.hls.startLoad(video.currentTime);
  setTimeout(flushAhead, RESUME_MS * 2);
}

function applySpeed() {
  const rate = Number($("speed").value);
  video.defaultPlaybackRate = rate;
  video.playbackRate = rate;
}

function formatTime(seconds) {
  const whole = Math.floor(seconds || 0);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

function renderPosition() {
  const duration = Number.isFinite(video.duration) ? ` / ${formatTime(video.duration)}` : "";
  $("position").textContent = `${formatTime(video.currentTime)}${duration}`;
}

// Purchases ------------------------------------------------------------------

function storageKey() {
  return `segmentgate.purchases.${state.viewer ? state.viewer.viewer_id : ""}`;
}

function saveIds() {
  localStorage.setItem(storageKey(), JSON.stringify([...state.purchases.keys()]));
}

async function loadStoredPurchases() {
  let ids = [];
  try {
    ids = JSON.parse(localStorage.getItem(storageKey()) || "[]");
  } catch {
    ids = [];
  }
  for (const id of ids) {
    try {
      track((await api("GET", `/v1/purchases/${encodeURIComponent(id)}`)).data);
    } catch (error) {
      if (error.status === 0) return;
    }
  }
  saveIds();
}

function itemTitle(contentId) {
  const item = state.catalog.find((entry) => entry.content_id === contentId);
  return item ? item.title : contentId;
}

function failedStep(purchase) {
  const failed = purchase.steps.filter((step) =>
    ["declined", "failed", "expired"].includes(step.outcome),
  );
  return failed.length ? failed[failed.length - 1] : null;
}

function outcomeText(purchase) {
  const step = failedStep(purchase);
  const detail = step && step.detail ? step.detail : "";
  switch (purchase.status) {
    case "granted":
      return purchase.refund_requested_at
        ? ["wait", "Refunding…"]
        : ["ok", "Payment captured. The video continues."];
    case "declined":
      return ["error", `Payment declined: ${DECLINE_MESSAGES[detail] || detail || "the card was declined"}. Try another card.`];
    case "failed":
      return ["error", `The purchase failed: ${detail || "see its steps"}. No money was kept.`];
    case "canceled":
      return ["ok", "The purchase was canceled. Nothing was charged."];
    case "refunded":
      return ["ok", "Refunded. The full video is locked again."];
    case "requires_action":
      return ["wait", "Waiting for your bank's authentication…"];
    default:
      return ["wait", `Processing the payment (${purchase.status})…`];
  }
}

function setBuyMessage(kind, text) {
  const message = $("buy-message");
  message.className = `message ${kind}`;
  message.textContent = text;
}

function running(purchase) {
  if (purchase.status === "granted") return Boolean(purchase.refund_requested_at);
  return !SETTLED.has(purchase.status);
}

function track(purchase) {
  const previous = state.purchases.get(purchase.purchase_id);
  state.purchases.set(purchase.purchase_id, purchase);
  if (!previous) saveIds();
  renderPurchases();
  const changed =
    !previous ||
    previous.status !== purchase.status ||
    previous.refund_requested_at !== purchase.refund_requested_at;
  if (changed) onPurchaseChanged(purchase, previous);
  if (running(purchase)) poll(purchase.purchase_id);
}

function onPurchaseChanged(purchase, previous) {
  note("purchase", { status: purchase.status, id: purchase.purchase_id });
  const current = state.item && purchase.content_id === state.item.content_id;
  if (current && previous) setBuyMessage(...outcomeText(purchase));
  if (purchase.status === "requires_action") openAuthentication(purchase);
  else closeAuthentication(purchase.purchase_id);
  if (!current) return;
  if (purchase.status === "granted" && !purchase.refund_requested_at) unlock();
  if (purchase.status === "refunded" && previous) relock();
}

// Reads a running purchase until it settles; an unreachable origin is
// retried, any other error ends the polling.
async function poll(purchaseId) {
  if (state.polling.has(purchaseId)) return;
  state.polling.add(purchaseId);
  try {
    for (;;) {
      await sleep(POLL_MS);
      let purchase;
      try {
        purchase = (await api("GET", `/v1/purchases/${encodeURIComponent(purchaseId)}`)).data;
      } catch (error) {
        if (error.status !== 0) return;
        await sleep(RETRY_MS);
        continue;
      }
      track(purchase);
      if (!running(purchase)) return;
    }
  } finally {
    state.polling.delete(purchaseId);
  }
}

async function buy(event) {
  event.preventDefault();
  const item = state.item;
  const card = new FormData($("buy")).get("card");
  const button = $("buy-button");

  // A purchase whose request got no response is sent again with its key,
  // and the origin's idempotency keys make it run at most once.
  const unanswered = state.unansweredBuy;
  const key =
    unanswered && unanswered.contentId === item.content_id && unanswered.card === card
      ? unanswered.key
      : crypto.randomUUID();
  state.unansweredBuy = null;

  button.disabled = true;
  setBuyMessage("wait", `Paying with ${CARD_NAMES[card] || card}…`);
  note("buy", { card });
  try {
    const { data } = await asViewer(() =>
      api(
        "POST",
        "/v1/purchases",
        { content_id: item.content_id, payment_method: card },
        { idempotent: true, key },
      ),
    );
    setBuyMessage(...outcomeText(data));
    track(data);
  } catch (error) {
    if (error.status === 0) state.unansweredBuy = { key, contentId: item.content_id, card };
    setBuyMessage("error", purchaseErrorText(error));
    if (error.status === 409) await trackBlocking(error.problem);
  } finally {
    button.disabled = false;
  }
}

// A 409 names the viewer's running purchase of the title, which may have
// started in another tab. Listing it lets the viewer authenticate or cancel it.
async function trackBlocking(problem) {
  const purchaseId = problem && problem.purchase_id;
  if (typeof purchaseId !== "string" || state.purchases.has(purchaseId)) return;
  try {
    track((await api("GET", `/v1/purchases/${encodeURIComponent(purchaseId)}`)).data);
  } catch (error) {
    note("blocking-purchase-unread", { status: error.status });
  }
}

function purchaseErrorText(error) {
  if (error.status === 0) {
    return "The origin cannot be reached. Buying again resends the same request, so the card is charged at most once.";
  }
  if (error.status === 409) return `No new purchase: ${error.message}.`;
  if (error.status === 422) return `The card cannot be used: ${error.message}.`;
  return `The purchase could not start: ${error.message}.`;
}

async function refund(purchaseId) {
  try {
    const { data } = await api(
      "POST",
      `/v1/purchases/${encodeURIComponent(purchaseId)}/refund`,
      undefined,
      { idempotent: true },
    );
    note("refund", { status: data.status });
    track(data);
  } catch (error) {
    setBuyMessage("error", `The refund could not start: ${error.message}.`);
  }
}

function renderPurchases() {
  const list = [...state.purchases.values()].reverse();
  $("no-purchases").hidden = list.length > 0;
  $("purchases").replaceChildren(...list.map(renderPurchase));
}

function renderPurchase(purchase) {
  const box = document.createElement("article");
  box.className = "purchase";
  box.dataset.purchaseId = purchase.purchase_id;
  box.dataset.status = purchase.status;

  const head = document.createElement("div");
  head.className = "purchase-head";
  const summary = document.createElement("span");
  const card = CARD_NAMES[purchase.payment_method] || purchase.payment_method;
  summary.textContent = `${itemTitle(purchase.content_id)} · ${purchase.price.amount} ${purchase.price.currency} · ${card}`;
  const status = document.createElement("span");
  status.className = `status ${purchase.status}`;
  status.textContent = purchase.status.replace("_", " ");
  head.append(summary, status);

  const steps = document.createElement("ol");
  steps.className = "steps";
  for (const step of purchase.steps) {
    const entry = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = `${step.step.replace("_", " ")} `;
    const outcome = document.createElement("span");
    outcome.className = `outcome-${step.outcome}`;
    outcome.textContent = step.outcome.replace("_", " ");
    entry.append(name, outcome);
    // Provider ids (pi_…, re_…) mean nothing to the viewer.
    if (step.detail && !/^(pi|re)_/.test(step.detail)) {
      entry.append(` (${step.detail})`);
    }
    steps.append(entry);
  }
  box.append(head, steps);

  if (purchase.status === "requires_action" && purchase.next_action) {
    box.append(actionButton("Authenticate", () => openAuthentication(purchase, true)));
  }
  if (purchase.status === "granted" && !purchase.refund_requested_at) {
    box.append(actionButton("Refund", () => refund(purchase.purchase_id)));
  }
  return box;
}

function actionButton(label, run) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.dataset.action = label.toLowerCase();
  button.addEventListener("click", run);
  return button;
}

// The issuer's authentication (3-D Secure) -----------------------------------

function openAuthentication(purchase, again = false) {
  const dialog = $("authentication");
  if (dialog.open && dialog.dataset.purchaseId === purchase.purchase_id) return;
  if (dialog.dataset.purchaseId === purchase.purchase_id && !again) return;
  dialog.dataset.purchaseId = purchase.purchase_id;
  const url = purchase.next_action ? purchase.next_action.url : null;
  const frame = $("authentication-frame");
  const link = $("authentication-link");
  $("authentication-none").hidden = Boolean(url);
  if (url && url.startsWith("/")) {
    // The sandbox issuer's page, served by this origin.
    frame.hidden = false;
    frame.src = url;
    link.hidden = true;
  } else if (url && url.startsWith("https://")) {
    // A real issuer's page, as Stripe names it, opens in its own tab.
    frame.hidden = true;
    link.hidden = false;
    $("authentication-anchor").href = url;
    window.open(url, "_blank", "noopener");
  } else {
    frame.hidden = true;
    link.hidden = true;
  }
  note("authentication", { url });
  dialog.showModal();
}

function closeAuthentication(purchaseId) {
  const dialog = $("authentication");
  if (dialog.open && dialog.dataset.purchaseId === purchaseId) {
    dialog.close();
    $("authentication-frame").removeAttribute("src");
  }
}

// Start ----------------------------------------------------------------------

function wire() {
  $("buy").addEventListener("submit", buy);
  $("speed").addEventListener("change", applySpeed);
  $("authentication-cancel").addEventListener("click", () => {
    const id = $("authentication").dataset.purchaseId;
    $("authentication").close();
    if (id) refund(id);
  });
  video.addEventListener("timeupdate", () => {
    renderPosition();
    checkPaywall();
    if (state.resuming && video.currentTime > previewEnd() + 0.05) {
      state.resuming = false;
      note("resumed");
    }
  });
  video.addEventListener("waiting", checkPaywall);
  video.addEventListener("ended", checkPaywall);
  video.addEventListener("playing", () => note("playing"));
}

async function start() {
  wire();
  loadStoredViewer();
  await loadCatalog();
  try {
    if (!state.viewer) await newViewer();
    await loadStoredPurchases();
  } catch (error) {
    setBuyMessage("error", `No viewer: ${error.message}.`);
  }
  const first = state.catalog.find((item) => item.policy.kind === "purchase") || state.catalog[0];
  if (first) play(first, 0);
}

start();
