/**
 * Exact decimals as strings (`"0.000003"`, `"4000"`), the way Tally writes quantities and
 * amounts: never a binary float. Only what the SDK needs: read, add, subtract, compare.
 */

const DECIMAL = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?$/;

/** A decimal as an integer of units of 10^-scale. */
interface Scaled {
  units: bigint;
  scale: number;
}

function parse(text: string): Scaled {
  if (!DECIMAL.test(text)) throw new TypeError(`${JSON.stringify(text)} is not a decimal`);
  const negative = text.startsWith("-");
  const [whole, fraction = ""] = (negative ? text.slice(1) : text).split(".");
  const units = BigInt(`${whole}${fraction}`);
  return { units: negative ? -units : units, scale: fraction.length };
}

function rescale(a: Scaled, scale: number): bigint {
  return a.units * 10n ** BigInt(scale - a.scale);
}

function format(units: bigint, scale: number): string {
  const negative = units < 0n;
  let digits = (negative ? -units : units).toString();
  if (scale > 0) {
    digits = digits.padStart(scale + 1, "0");
    let text = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
    text = text.replace(/\.?0+$/, "");
    digits = text;
  }
  return negative && digits !== "0" ? `-${digits}` : digits;
}

/** Whether `text` is a plain decimal (optional sign, digits, optional fraction; no
 * exponent). */
export function isDecimal(text: string): boolean {
  return DECIMAL.test(text);
}

/** `a + b`, exactly. */
export function decimalAdd(a: string, b: string): string {
  const x = parse(a);
  const y = parse(b);
  const scale = Math.max(x.scale, y.scale);
  return format(rescale(x, scale) + rescale(y, scale), scale);
}

/** `a - b`, exactly. */
export function decimalSub(a: string, b: string): string {
  const x = parse(a);
  const y = parse(b);
  const scale = Math.max(x.scale, y.scale);
  return format(rescale(x, scale) - rescale(y, scale), scale);
}

/** -1, 0 or 1 as `a` is below, equal to or above `b`. */
export function decimalCompare(a: string, b: string): -1 | 0 | 1 {
  const x = parse(a);
  const y = parse(b);
  const scale = Math.max(x.scale, y.scale);
  const d = rescale(x, scale) - rescale(y, scale);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

/** A positive quantity as the decimal string sent on the wire: a safe integer, a bigint or
 * a decimal string; a number with a fraction is refused (it is not exact). */
export function positiveQuantity(value: number | bigint | string, what: string): string {
  let text: string;
  if (typeof value === "bigint") text = value.toString();
  else if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new TypeError(`${what} must be a safe integer, a bigint or a decimal string, not ${value}`);
    }
    text = String(value);
  } else if (typeof value === "string") {
    if (!DECIMAL.test(value)) throw new TypeError(`${what} ${JSON.stringify(value)} is not a decimal`);
    text = value;
  } else {
    throw new TypeError(`${what} must be a safe integer, a bigint or a decimal string`);
  }
  if (decimalCompare(text, "0") <= 0) throw new RangeError(`${what} must be positive, got ${text}`);
  return text;
}
