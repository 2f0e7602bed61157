// Reading the service's Prometheus text: enough of the format for its own counters, gauges and
// histograms (no timestamps, no exemplars).

const LINE = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

/** [{name, labels, value}] of every sample. */
export function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = LINE.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, k, v] of (match[2] || "").matchAll(LABEL)) labels[k] = v.replace(/\\(.)/g, "$1");
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** The sum of the samples named `name` whose labels pass `keep`. */
export function total(samples, name, keep = () => true) {
  return samples
    .filter((s) => s.name === name && keep(s.labels))
    .reduce((sum, s) => sum + s.value, 0);
}

/** Cumulative histogram buckets {le: count}, summed over the samples that pass `keep`. */
export function buckets(samples, name, keep = () => true) {
  const out = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket` || !keep(s.labels)) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    out.set(le, (out.get(le) || 0) + s.value);
  }
  return out;
}

/** The q-quantile of the observations between two bucket snapshots, as Prometheus estimates it
 * (linear within the bucket it falls in); null when nothing was observed. */
export function quantile(q, before, after) {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => after.get(le) - (before.get(le) || 0));
  const count = counts[counts.length - 1];
  if (!count) return null;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (let i = 0; i < bounds.length; i += 1) {
    if (counts[i] >= rank) {
      if (bounds[i] === Infinity) return lower;
      return lower + (bounds[i] - lower) * ((rank - below) / Math.max(counts[i] - below, 1e-9));
    }
    lower = bounds[i];
    below = counts[i];
  }
  return lower;
}
