// The fleet map: taxis and H3 zones on a canvas in Web Mercator, no tile server needed.
// With a tile URL (dashboard.tile_url) a base map is drawn underneath.
'use strict';

(() => {
  const TILE = 256;

  // Web Mercator, in world units [0, 1).
  function project(lat, lon) {
    const clamped = Math.max(-85.05, Math.min(85.05, lat));
    const s = Math.sin((clamped * Math.PI) / 180);
    return {
      x: (lon + 180) / 360,
      y: 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI),
    };
  }

  class FleetMap {
    constructor(canvas, tileUrl) {
      this.canvas = canvas;
      this.tileUrl = tileUrl || null;
      this.taxis = {};
      this.zones = []; // [{cell, value}]
      this.view = null; // {x0, y0, x1, y1} in world units
      this.tiles = new Map();
      this.pending = false;
      window.addEventListener('resize', () => this.draw());
    }

    setTaxis(taxis) {
      this.taxis = taxis;
      this.draw();
    }

    setZones(zones) {
      this.zones = zones.filter((z) => window.h3 && window.h3.isValidCell(z.cell));
      this.draw();
    }

    // Every point to show, in world units.
    points() {
      const points = Object.values(this.taxis).map((t) => project(t.lat, t.lon));
      for (const zone of this.zones) {
        const [lat, lon] = window.h3.cellToLatLng(zone.cell);
        points.push(project(lat, lon));
      }
      return points;
    }

    // Keeps the view while everything fits in it, so that movement shows; refits otherwise.
    fit() {
      const points = this.points();
      if (points.length === 0) return;
      const inside = (p) => this.view && p.x > this.view.x0 && p.x < this.view.x1
        && p.y > this.view.y0 && p.y < this.view.y1;
      if (this.view && points.every(inside)) return;
      let x0 = Infinity; let y0 = Infinity; let x1 = -Infinity; let y1 = -Infinity;
      for (const p of points) {
        x0 = Math.min(x0, p.x); y0 = Math.min(y0, p.y);
        x1 = Math.max(x1, p.x); y1 = Math.max(y1, p.y);
      }
      const minimum = 2e-5; // about 800 m
      const w = Math.max(x1 - x0, minimum);
      const h = Math.max(y1 - y0, minimum);
      const cx = (x0 + x1) / 2; const cy = (y0 + y1) / 2;
      this.view = {
        x0: cx - w * 0.65, x1: cx + w * 0.65, y0: cy - h * 0.65, y1: cy + h * 0.65,
      };
    }

    draw() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.render();
      });
    }

    render() {
      const canvas = this.canvas;
      const ratio = window.devicePixelRatio || 1;
      const width = canvas.clientWidth; const height = canvas.clientHeight;
      if (width === 0 || height === 0) return;
      if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
      if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
      const ctx = canvas.getContext('2d');
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.fillStyle = '#eef2f6';
      ctx.fillRect(0, 0, width, height);
      this.fit();
      if (!this.view) {
        this.caption(ctx, 'no positions yet');
        return;
      }
      const v = this.view;
      const scale = Math.min(width / (v.x1 - v.x0), height / (v.y1 - v.y0));
      const cx = (v.x0 + v.x1) / 2; const cy = (v.y0 + v.y1) / 2;
      const toScreen = (p) => ({
        x: width / 2 + (p.x - cx) * scale,
        y: height / 2 + (p.y - cy) * scale,
      });
      if (this.tileUrl) this.drawTiles(ctx, scale, cx, cy, width, height);
      this.drawGraticule(ctx, toScreen, scale, cx, cy, width, height);
      this.drawZones(ctx, toScreen);
      this.drawTaxis(ctx, toScreen);
    }

    drawTiles(ctx, scale, cx, cy, width, height) {
      const z = Math.max(0, Math.min(19, Math.round(Math.log2(scale / TILE))));
      const n = 2 ** z;
      const left = cx - width / 2 / scale; const top = cy - height / 2 / scale;
      const right = cx + width / 2 / scale; const bottom = cy + height / 2 / scale;
      for (let tx = Math.floor(left * n); tx <= Math.floor(right * n); tx += 1) {
        for (let ty = Math.floor(top * n); ty <= Math.floor(bottom * n); ty += 1) {
          if (tx < 0 || ty < 0 || tx >= n || ty >= n) continue;
          const url = this.tileUrl.replace('{z}', z).replace('{x}', tx).replace('{y}', ty);
          let image = this.tiles.get(url);
          if (!image) {
            image = new Image();
            image.onload = () => this.draw();
            image.src = url;
            this.tiles.set(url, image);
          }
          if (image.complete && image.naturalWidth > 0) {
            const x = width / 2 + (tx / n - cx) * scale;
            const y = height / 2 + (ty / n - cy) * scale;
            ctx.drawImage(image, x, y, scale / n + 1, scale / n + 1);
          }
        }
      }
      ctx.fillStyle = 'rgba(255,255,255,0.7)';
      ctx.fillRect(width - 120, height - 16, 120, 16);
      ctx.fillStyle = '#333';
      ctx.font = '10px sans-serif';
      ctx.fillText('base map: tile server', width - 115, height - 5);
    }

    // Lines of latitude and longitude, at a round step for the zoom.
    drawGraticule(ctx, toScreen, scale, cx, cy, width, height) {
      const degrees = (360 * width) / scale;
      const steps = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10];
      const step = steps.find((s) => degrees / s < 10) || 10;
      const lonLeft = (cx - width / 2 / scale) * 360 - 180;
      const lonRight = (cx + width / 2 / scale) * 360 - 180;
      const latOf = (y) => (Math.atan(Math.sinh(Math.PI * (1 - 2 * y))) * 180) / Math.PI;
      const latTop = latOf(cy - height / 2 / scale);
      const latBottom = latOf(cy + height / 2 / scale);
      ctx.strokeStyle = this.tileUrl ? 'rgba(80,90,110,0.25)' : '#d5dbe4';
      ctx.fillStyle = '#8a94a6';
      ctx.font = '10px sans-serif';
      ctx.lineWidth = 1;
      const digits = Math.max(0, -Math.floor(Math.log10(step)));
      for (let lon = Math.ceil(lonLeft / step) * step; lon <= lonRight; lon += step) {
        const p = toScreen(project(0, lon));
        ctx.beginPath(); ctx.moveTo(p.x, 0); ctx.lineTo(p.x, height); ctx.stroke();
        ctx.fillText(`${lon.toFixed(digits)}°E`, p.x + 2, 10);
      }
      for (let lat = Math.ceil(latBottom / step) * step; lat <= latTop; lat += step) {
        const p = toScreen(project(lat, 0));
        ctx.beginPath(); ctx.moveTo(0, p.y); ctx.lineTo(width, p.y); ctx.stroke();
        ctx.fillText(`${lat.toFixed(digits)}°N`, 2, p.y - 2);
      }
    }

    drawZones(ctx, toScreen) {
      if (!window.h3 || this.zones.length === 0) return;
      const max = Math.max(...this.zones.map((z) => z.value), 1);
      for (const zone of this.zones) {
        const boundary = window.h3.cellToBoundary(zone.cell);
        ctx.beginPath();
        boundary.forEach(([lat, lon], i) => {
          const p = toScreen(project(lat, lon));
          if (i === 0) ctx.moveTo(p.x, p.y); else ctx.lineTo(p.x, p.y);
        });
        ctx.closePath();
        ctx.fillStyle = `rgba(31,111,235,${0.08 + 0.35 * (zone.value / max)})`;
        ctx.fill();
        ctx.strokeStyle = 'rgba(31,111,235,0.5)';
        ctx.stroke();
      }
    }

    drawTaxis(ctx, toScreen) {
      const taxis = Object.values(this.taxis);
      const labels = taxis.length <= 60;
      ctx.font = '11px sans-serif';
      for (const taxi of taxis) {
        const p = toScreen(project(taxi.lat, taxi.lon));
        ctx.beginPath();
        ctx.arc(p.x, p.y, 5, 0, 2 * Math.PI);
        ctx.fillStyle = taxi.status === 'offline' ? '#9a6700' : '#1a7f37';
        ctx.fill();
        ctx.strokeStyle = '#fff';
        ctx.lineWidth = 1.5;
        ctx.stroke();
        if (labels) {
          ctx.fillStyle = '#1d2430';
          ctx.fillText(taxi.taxi_id, p.x + 7, p.y + 4);
        }
      }
    }

    caption(ctx, text) {
      ctx.fillStyle = '#647084';
      ctx.font = '14px sans-serif';
      ctx.fillText(text, 16, 24);
    }
  }

  window.FleetMap = FleetMap;
})();
