// The fleet dashboard: signs the person in (OpenID Connect, authorization code with PKCE,
// run here in the browser; see reporting/src/dashboard/signin.rs for why), then shows what
// the reporting API lets their roles see. Everything it shows comes from /v1 with their
// access token; the live map's positions are pushed by GET /v1/live (server-sent events).
//
// window.dashboard is the page's state (taxis, charts, tables, orders), readable by tests.
'use strict';

(() => {
  const store = window.sessionStorage;
  const FINAL_STATES = ['accepted', 'rejected', 'expired'];
  const WINDOW_MINUTES = 30;
  const CHART_REFRESH_MS = 10000;

  const state = {
    signedIn: false,
    me: null,
    settings: null,
    error: null,
    taxis: {},
    live: { connected: false, events: 0 },
    charts: {},
    tables: {},
    orders: {},
  };
  window.dashboard = state;

  const $ = (selector) => document.querySelector(selector);
  const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  // ---- Sign-in -------------------------------------------------------------------------

  function base64url(bytes) {
    let text = '';
    bytes.forEach((b) => { text += String.fromCharCode(b); });
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function randomToken() {
    const bytes = new Uint8Array(32);
    crypto.getRandomValues(bytes);
    return base64url(bytes);
  }

  async function s256(text) {
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
    return base64url(new Uint8Array(digest));
  }

  function jwtClaims(jwt) {
    const part = (jwt || '').split('.')[1];
    if (!part) return null;
    const padded = part.replace(/-/g, '+').replace(/_/g, '/');
    try {
      const json = decodeURIComponent(Array.from(atob(padded),
        (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''));
      return JSON.parse(json);
    } catch {
      return null;
    }
  }

  function redirectUri(oidc) {
    return oidc.redirect_uri || `${window.location.origin}/dashboard/`;
  }

  function token() {
    const expires = Number(store.getItem('expires') || '0');
    if (expires && Date.now() > expires) {
      store.removeItem('token');
      return null;
    }
    return store.getItem('token');
  }

  async function startSignIn() {
    const oidc = state.settings.oidc;
    const verifier = randomToken();
    const request = { verifier, state: randomToken(), nonce: randomToken() };
    store.setItem('signin', JSON.stringify(request));
    const url = new URL(oidc.authorization_endpoint);
    const params = url.searchParams;
    params.set('response_type', 'code');
    params.set('client_id', oidc.client_id);
    params.set('redirect_uri', redirectUri(oidc));
    params.set('scope', oidc.scope);
    params.set('state', request.state);
    params.set('nonce', request.nonce);
    params.set('code_challenge', await s256(verifier));
    params.set('code_challenge_method', 'S256');
    params.set('resource', oidc.audience);
    window.location.assign(url.toString());
  }

  // The provider sent the browser back: check the answer, exchange the code.
  async function finishSignIn(params) {
    const request = JSON.parse(store.getItem('signin') || 'null');
    store.removeItem('signin');
    window.history.replaceState(null, '', window.location.pathname);
    if (params.get('error')) {
      throw new Error(`The sign-in was refused: ${params.get('error')} ${params.get('error_description') || ''}`);
    }
    if (!request || params.get('state') !== request.state) {
      throw new Error('This sign-in answer does not belong to a sign-in started here (state); sign in again.');
    }
    const oidc = state.settings.oidc;
    if (params.has('iss') && params.get('iss') !== oidc.issuer) {
      throw new Error('This sign-in answer comes from another issuer.');
    }
    const response = await fetch(oidc.token_endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code: params.get('code') || '',
        redirect_uri: redirectUri(oidc),
        client_id: oidc.client_id,
        code_verifier: request.verifier,
      }),
    });
    const tokens = await response.json().catch(() => ({}));
    if (!response.ok || !tokens.access_token) {
      throw new Error(`The code exchange was refused: ${tokens.error || response.status} ${tokens.error_description || ''}`);
    }
    const claims = jwtClaims(tokens.id_token);
    const audiences = claims && (Array.isArray(claims.aud) ? claims.aud : [claims.aud]);
    if (!claims || claims.nonce !== request.nonce || claims.iss !== oidc.issuer
        || !audiences.includes(oidc.client_id)) {
      throw new Error('The ID token does not match this sign-in (nonce, issuer or audience).');
    }
    store.setItem('token', tokens.access_token);
    store.setItem('id_token', tokens.id_token);
    store.setItem('expires', String(Date.now() + (tokens.expires_in || 300) * 1000));
  }

  function showSignIn(message) {
    state.signedIn = false;
    document.body.dataset.signedIn = 'false';
    $('#tabs').hidden = true;
    $('#signout').hidden = true;
    document.querySelectorAll('.tab').forEach((tab) => { tab.hidden = true; });
    $('#signin').hidden = false;
    $('#signin-message').textContent = message || '';
    const oidc = state.settings && state.settings.oidc;
    const ready = oidc && !oidc.error && oidc.authorization_endpoint;
    $('#signin-button').hidden = !ready;
    if (oidc && oidc.error && !message) $('#signin-message').textContent = oidc.error;
    $('#dev-signin').hidden = !(state.settings && state.settings.dev_sign_in);
    if (!ready && !(state.settings && state.settings.dev_sign_in) && !message) {
      $('#signin-message').textContent = 'Single sign-on is not configured for this service (auth.oidc).';
    }
  }

  function signOut(message) {
    const idToken = store.getItem('id_token');
    ['token', 'id_token', 'expires', 'signin'].forEach((key) => store.removeItem(key));
    if (state.liveAbort) state.liveAbort.abort();
    const oidc = state.settings && state.settings.oidc;
    if (!message && idToken && oidc && oidc.end_session_endpoint) {
      const url = new URL(oidc.end_session_endpoint);
      url.searchParams.set('id_token_hint', idToken);
      url.searchParams.set('client_id', oidc.client_id);
      window.location.assign(url.toString());
      return;
    }
    showSignIn(message);
  }

  // ---- The API -------------------------------------------------------------------------

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}), Authorization: `Bearer ${token()}` };
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      signOut('Your sign-in has ended; sign in again.');
      throw new Error('not signed in');
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.error || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  const may = (permission) => Boolean(state.me && state.me.permissions.includes(permission));

  // ---- Live map (server-sent events over fetch, so the token goes in a header) ----------

  function applyLive(type, data) {
    const message = JSON.parse(data);
    if (type === 'snapshot') state.taxis = {};
    for (const taxi of message.taxis) state.taxis[taxi.taxi_id] = taxi;
    for (const id of message.removed || []) delete state.taxis[id];
    state.live.events += 1;
    const canvas = $('#map');
    canvas.dataset.taxis = String(Object.keys(state.taxis).length);
    canvas.dataset.updates = String(state.live.events);
    state.map.setTaxis(state.taxis);
    const list = $('#taxi-ids');
    if (list.children.length !== Object.keys(state.taxis).length) {
      list.replaceChildren(...Object.keys(state.taxis).sort().map((id) => {
        const option = document.createElement('option');
        option.value = id;
        return option;
      }));
    }
    $('#map-status').textContent = `${Object.keys(state.taxis).length} taxis, live (updated ${new Date().toLocaleTimeString()})`;
  }

  function dispatchBlock(block) {
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length > 0) applyLive(type, data.join('\n'));
  }

  async function followLive() {
    const controller = new AbortController();
    state.liveAbort = controller;
    while (!controller.signal.aborted) {
      try {
        const response = await fetch('/v1/live', {
          headers: { Authorization: `Bearer ${token()}`, Accept: 'text/event-stream' },
          signal: controller.signal,
        });
        if (response.status === 401) {
          signOut('Your sign-in has ended; sign in again.');
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        state.live.connected = true;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n/g, '\n');
          let end = buffer.indexOf('\n\n');
          while (end >= 0) {
            dispatchBlock(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            end = buffer.indexOf('\n\n');
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        $('#map-status').textContent = `live positions interrupted (${error.message}); reconnecting…`;
      }
      state.live.connected = false;
      await sleep(2000);
    }
  }

  // ---- Charts (uPlot) ------------------------------------------------------------------

  function chartWidth(element) {
    return Math.max(320, (element.clientWidth || element.parentElement.clientWidth || 640) - 10);
  }

  function setChart(name, element, options, data) {
    const old = state.charts[name];
    if (old && old.plot) old.plot.destroy();
    const plot = new window.uPlot({ width: chartWidth(element), height: 220, ...options }, data, element);
    const points = data[0].length;
    element.dataset.points = String(points);
    state.charts[name] = { plot, points, updated: Date.now() };
  }

  const seconds = (iso) => Date.parse(iso) / 1000;
  // Counts start at zero, so that bars and lines compare by their height.
  const fromZero = { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] };

  async function refreshWindows() {
    const from = new Date(Date.now() - WINDOW_MINUTES * 60000).toISOString();
    const page = await api(`/v1/windows?zone=fleet&from=${encodeURIComponent(from)}&limit=1000`);
    const rows = page.items;
    setChart('windows', $('#window-chart'), {
      scales: { y: fromZero },
      series: [
        {},
        { label: 'positions', stroke: '#1f6feb', width: 2 },
        { label: 'taxis', stroke: '#1a7f37', width: 2 },
        { label: 'avg km/h', stroke: '#bc4c00', width: 1, scale: 'kmh' },
      ],
      axes: [{}, { label: 'count' }, { side: 1, scale: 'kmh', label: 'km/h', grid: { show: false } }],
    }, [
      rows.map((r) => seconds(r.window_start)),
      rows.map((r) => r.positions),
      rows.map((r) => r.taxis),
      rows.map((r) => r.avg_speed_kmh),
    ]);
    // The zones of the newest window with zone figures, on the map.
    const recent = new Date(Date.now() - 120000).toISOString();
    const zones = await api(`/v1/windows?zone=all&from=${encodeURIComponent(recent)}&limit=2000`);
    const cells = zones.items.filter((r) => r.zone !== 'fleet');
    const newest = cells.reduce((m, r) => (r.window_start > m ? r.window_start : m), '');
    state.map.setZones(cells.filter((r) => r.window_start === newest)
      .map((r) => ({ cell: r.zone, value: r.positions })));
  }

  async function refreshDaily() {
    const page = await api('/v1/daily?source=fleet&limit=1000');
    const rows = page.items;
    const days = rows.map((r) => seconds(`${r.day}T12:00:00Z`));
    setChart('daily', $('#daily-chart'), {
      scales: { y: fromZero, money: fromZero },
      series: [
        {},
        { label: 'trips', stroke: '#1f6feb', fill: 'rgba(31,111,235,0.3)', paths: window.uPlot.paths.bars({ size: [0.6, 40] }) },
        { label: 'revenue', stroke: '#1a7f37', scale: 'money', value: (u, v) => (v == null ? '' : (v / 100).toFixed(2)) },
      ],
      axes: [{}, { label: 'trips' }, {
        side: 1, scale: 'money', grid: { show: false }, values: (u, vs) => vs.map((v) => (v / 100).toFixed(0)),
      }],
    }, [days, rows.map((r) => r.trips), rows.map((r) => r.revenue_cents)]);
    setChart('cumulative', $('#cumulative-chart'), {
      scales: { y: fromZero },
      series: [{}, { label: 'cumulative trips', stroke: '#8250df', width: 2, points: { show: true } }],
    }, [days, rows.map((r) => r.cumulative_trips)]);
  }

  function every(ms, task, name) {
    const run = async () => {
      try {
        await task();
      } catch (error) {
        if (state.signedIn) state.error = `${name}: ${error.message}`;
      }
    };
    run();
    return setInterval(run, ms);
  }

  // ---- Tables with pages ---------------------------------------------------------------

  const TABLES = {
    trips: {
      path: '/v1/trips',
      columns: ['tour_id', 'taxi_id', 'state', 'started_at', 'ended_at', 'fare_cents', 'currency', 'distance_m', 'flagged'],
    },
    invoices: {
      path: '/v1/invoices',
      columns: ['tour_id', 'taxi_id', 'ended_at', 'fare_cents', 'meter_cents', 'difference_cents', 'currency', 'flagged', 'flag_reason'],
    },
    orders: {
      path: '/v1/orders',
      columns: ['order_id', 'taxi_id', 'kind', 'text', 'sender', 'created_at', 'state', 'updated_at', 'attempts'],
    },
  };

  function cell(column, value) {
    const td = document.createElement('td');
    if (value === null || value === undefined) {
      td.textContent = '';
    } else if (column.endsWith('_cents')) {
      td.textContent = (value / 100).toFixed(2);
      td.className = 'number';
    } else if (column.endsWith('_at') && typeof value === 'string') {
      td.textContent = new Date(value).toLocaleString();
      td.title = value;
    } else if (typeof value === 'number') {
      td.textContent = String(value);
      td.className = 'number';
    } else {
      td.textContent = String(value);
    }
    return td;
  }

  class Table {
    constructor(name, element) {
      this.name = name;
      this.spec = TABLES[name];
      this.element = element;
      this.size = 20;
      this.pages = []; // URLs of the pages shown, the current one last
      this.next = null;
      state.tables[name] = { page: 0, ids: [], next: null, table: this };
      this.build();
    }

    build() {
      const toolbar = document.createElement('div');
      toolbar.className = 'toolbar';
      this.previousButton = Object.assign(document.createElement('button'), { type: 'button', textContent: '← Previous', className: 'previous' });
      this.nextButton = Object.assign(document.createElement('button'), { type: 'button', textContent: 'Next →', className: 'next' });
      this.pageLabel = Object.assign(document.createElement('span'), { className: 'page' });
      this.sizeSelect = document.createElement('select');
      this.sizeSelect.className = 'page-size';
      for (const size of [5, 20, 50, 100]) {
        const option = Object.assign(document.createElement('option'), { value: String(size), textContent: `${size} a page` });
        if (size === this.size) option.selected = true;
        this.sizeSelect.append(option);
      }
      const refresh = Object.assign(document.createElement('button'), { type: 'button', textContent: 'Refresh', className: 'refresh' });
      this.previousButton.addEventListener('click', () => this.previous());
      this.nextButton.addEventListener('click', () => this.forward());
      refresh.addEventListener('click', () => this.first());
      this.sizeSelect.addEventListener('change', () => {
        this.size = Number(this.sizeSelect.value);
        this.first();
      });
      toolbar.append(this.previousButton, this.nextButton, this.pageLabel, this.sizeSelect, refresh);
      this.body = document.createElement('div');
      this.element.replaceChildren(toolbar, this.body);
    }

    async first() {
      this.pages = [];
      await this.load(`${this.spec.path}?limit=${this.size}`);
    }

    async forward() {
      if (this.next) await this.load(this.next);
    }

    async previous() {
      if (this.pages.length < 2) return;
      this.pages.pop();
      await this.load(this.pages.pop());
    }

    async load(url) {
      const info = state.tables[this.name];
      info.loading = true;
      try {
        const page = await api(url);
        this.pages.push(url);
        this.next = page.next;
        this.render(page.items);
        info.page = this.pages.length;
        info.ids = page.items.map((row) => row[this.spec.columns[0]]);
        info.next = page.next;
        info.error = null;
      } catch (error) {
        info.error = error.message;
        this.body.replaceChildren(Object.assign(document.createElement('p'), { className: 'empty error', textContent: error.message }));
      } finally {
        info.loading = false;
      }
      this.previousButton.disabled = this.pages.length < 2;
      this.nextButton.disabled = !this.next;
      this.pageLabel.textContent = `page ${this.pages.length}`;
    }

    render(rows) {
      if (rows.length === 0) {
        this.body.replaceChildren(Object.assign(document.createElement('p'), { className: 'empty', textContent: 'nothing in the last 24 hours' }));
        return;
      }
      const table = document.createElement('table');
      const head = table.createTHead().insertRow();
      for (const column of this.spec.columns) {
        head.append(Object.assign(document.createElement('th'), { textContent: column.replace(/_/g, ' ') }));
      }
      const body = table.createTBody();
      for (const row of rows) {
        const tr = body.insertRow();
        tr.dataset.id = String(row[this.spec.columns[0]]);
        for (const column of this.spec.columns) tr.append(cell(column, row[column]));
      }
      this.body.replaceChildren(table);
    }
  }

  // ---- Orders --------------------------------------------------------------------------

  function showOrder(order) {
    const id = order.order_id;
    const known = state.orders[id] || {};
    const history = (order.history || []).map((event) => event.state);
    state.orders[id] = { ...known, state: order.state, taxi_id: order.taxi_id, history };
    let item = document.querySelector(`#sent-orders li[data-order-id="${CSS.escape(id)}"]`);
    if (!item) {
      item = document.createElement('li');
      item.dataset.orderId = id;
      $('#sent-orders').prepend(item);
    }
    item.dataset.state = order.state;
    const stateLabel = Object.assign(document.createElement('span'), { className: 'state', textContent: order.state });
    const path = history.length > 0 ? ` (${history.join(' → ')})` : '';
    item.replaceChildren(`${order.taxi_id}: “${order.text || ''}” `, stateLabel, path);
  }

  async function followOrder(id) {
    const until = Date.now() + 15 * 60000;
    while (Date.now() < until && state.signedIn) {
      await sleep(1000);
      try {
        const order = await api(`/v1/orders/${encodeURIComponent(id)}`);
        showOrder(order);
        if (FINAL_STATES.includes(order.state)) return;
      } catch (error) {
        if (error.status !== 404) state.orders[id].error = error.message;
      }
    }
  }

  async function sendOrder(event) {
    event.preventDefault();
    const button = $('#order-send');
    $('#order-error').textContent = '';
    button.disabled = true;
    try {
      const order = await api('/v1/orders', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({
          taxi_id: $('#order-taxi').value.trim(),
          kind: $('#order-kind').value,
          text: $('#order-text').value,
          expires_in_s: Number($('#order-expires').value),
        }),
      });
      showOrder(order);
      $('#order-text').value = '';
      followOrder(order.order_id);
    } catch (error) {
      $('#order-error').textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }

  // ---- Tabs and start-up ---------------------------------------------------------------

  function showTab(name) {
    document.querySelectorAll('.tab').forEach((tab) => { tab.hidden = tab.id !== name; });
    document.querySelectorAll('#tabs button').forEach((button) => {
      button.classList.toggle('active', button.dataset.tab === name);
    });
    state.tab = name;
    const table = state.tables[name];
    if (table && table.page === 0) table.table.first();
    if (name === 'daily') refreshDaily().catch((error) => { state.error = `daily: ${error.message}`; });
    if (name === 'live') state.map.draw();
  }

  function start() {
    state.signedIn = true;
    document.body.dataset.signedIn = 'true';
    $('#signin').hidden = true;
    $('#who-name').textContent = `${state.me.name} (${state.me.roles.join(', ')})`;
    $('#signout').hidden = false;
    const tabs = $('#tabs');
    tabs.hidden = false;
    let first = null;
    tabs.querySelectorAll('button').forEach((button) => {
      button.hidden = !may(button.dataset.permission);
      if (!button.hidden && !first) first = button.dataset.tab;
    });
    state.map = new window.FleetMap($('#map'), state.settings.tile_url);
    for (const name of Object.keys(TABLES)) {
      if (may(name)) new Table(name, $(`#${name}-table`)); // eslint-disable-line no-new
    }
    $('#order-form').hidden = !may('orders.send');
    if (may('fleet')) followLive();
    if (may('reports')) every(CHART_REFRESH_MS, refreshWindows, 'windows');
    if (first) showTab(first);
    else $('#signin-message').textContent = 'Your roles grant nothing this dashboard shows.';
  }

  async function main() {
    $('#tabs').addEventListener('click', (event) => {
      const tab = event.target.closest('button[data-tab]');
      if (tab) showTab(tab.dataset.tab);
    });
    $('#signin-button').addEventListener('click', () => {
      startSignIn().catch((error) => showSignIn(error.message));
    });
    $('#signout').addEventListener('click', () => signOut());
    $('#dev-signin').addEventListener('submit', (event) => {
      event.preventDefault();
      store.setItem('token', $('#dev-token').value.trim());
      store.removeItem('expires');
      window.location.reload();
    });
    $('#order-form').addEventListener('submit', sendOrder);

    try {
      const response = await fetch('settings.json');
      state.settings = await response.json();
    } catch (error) {
      state.settings = { oidc: null, dev_sign_in: false };
      showSignIn(`The dashboard's settings cannot be read: ${error.message}`);
      return;
    }
    const params = new URLSearchParams(window.location.search);
    if (params.has('code') || params.has('error')) {
      try {
        await finishSignIn(params);
      } catch (error) {
        state.error = error.message;
        showSignIn(error.message);
        return;
      }
    }
    if (!token()) {
      showSignIn();
      return;
    }
    try {
      state.me = await api('/v1/me');
    } catch (error) {
      if (!$('#signin').hidden) return;
      showSignIn(`Signing in failed: ${error.message}`);
      return;
    }
    start();
  }

  main();
})();
