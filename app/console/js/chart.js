// Training curves on uPlot (app/console/vendor): loss per epoch on a log scale, and one
// validation figure in [0, 1] on its own axis where the base has one (recall@1 for text pairs,
// exact match of greedy answers for SFT).

import { formatNumber } from "./dom.js";

const COLORS = { train: "#2563eb", validation: "#dc2626", extra: "#16a34a" };

/** A chart in `target`; `extra` ({key, label}) names a metrics field drawn on a 0..1 axis. */
export function lossChart(target, extra = null) {
  const series = [
    { label: "epoch" },
    { label: "train loss", stroke: COLORS.train, width: 2, points: { show: true } },
    { label: "validation loss", stroke: COLORS.validation, width: 2, points: { show: true } },
  ];
  const values = (u, ticks) => ticks.map((v) => formatNumber(v, 3));
  // Epochs are whole numbers: ticks only at integer steps.
  const epochTicks = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
  const axes = [{ label: "epoch", incrs: epochTicks }, { label: "loss", size: 70, values }];
  const scales = { x: { time: false }, y: { distr: 3 } };
  if (extra) {
    series.push({ label: extra.label, stroke: COLORS.extra, width: 2, scale: "extra", points: { show: true } });
    axes.push({ label: extra.label, scale: "extra", side: 1, size: 60, values, grid: { show: false } });
    scales.extra = { range: [0, 1] };
  }
  const width = Math.max(320, target.clientWidth || 640);
  const plot = new window.uPlot({ width, height: 260, series, axes, scales, legend: { live: false } }, series.map(() => []), target);
  const points = []; // [epoch, train, validation, extra]
  return {
    add(data) {
      const at = points.findIndex((p) => p[0] === data.epoch);
      const point = [data.epoch, data.train_loss, data.validation_loss ?? null];
      if (extra) point.push(data[extra.key] ?? null);
      if (at >= 0) points[at] = point;
      else points.push(point);
      points.sort((a, b) => a[0] - b[0]);
      plot.setData(series.map((_, i) => points.map((p) => p[i])));
      target.dataset.points = String(points.length); // how many epochs are drawn, for tests
    },
    destroy() {
      plot.destroy();
      delete target.dataset.points;
    },
  };
}
