// Barcodes as the box reads them, for the handheld page when it is offline.
//
// This is a line-for-line port of hardware/barcodes.py (`interpretations`) and of `resolve_ids` in
// appliance/catalog/products.py, including the parts of the `biip` library those use (GTIN, UPC-E and
// GS1 element string parsing). It exists so a scan resolved on the handheld with no network gives the
// same product, the same `matched_by` and the same "ambiguous" as the box would; any departure is a bug,
// and tests/web/test_handheld_barcodes.py runs both over the same codes in a real browser to catch it.
//
// Where Python's string semantics differ from JavaScript's, the Python ones are copied on purpose:
// lengths and slices count code points, not UTF-16 units; "whitespace" is Python's str.isspace set
// (which includes the GS separator itself, so a GS at either end of a scan is trimmed as the box trims
// it); `\d` in biip's patterns is Python's Unicode decimal digit, so a GS1 string typed in another
// script's digits reads (and fails to match any stored code) exactly as it does on the box; and case
// folding of SKUs is ASCII-only, like SQLite's NOCASE.
//
// Plain ES module, no dependencies, no build step.

/** The ASCII group separator scanners send for FNC1 between variable-length GS1 fields. */
export const GS = "\x1d";

/** The barcode kinds a reading can have, as `hardware.barcodes.KINDS`. */
export const KINDS = Object.freeze(["ean13", "upca", "upce", "ean8", "gtin14"]);

const NO_PRODUCT = "0".repeat(14); // an all-zero GTIN is never a product's barcode
const KIND_BY_LENGTH = { 12: "upca", 13: "ean13", 14: "gtin14" };

// -- Python's string semantics -----------------------------------------------------------------------
// str.isspace() in Python 3.11: not JavaScript's trim() set (Python adds U+001C..U+001F and U+0085,
// JavaScript adds U+FEFF), and the difference matters because GS (U+001D) is one of them.
const PY_SPACE_CLASS = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_SPACE = new RegExp(`[${PY_SPACE_CLASS}]`, "u");
const PY_SPACES = new RegExp(`[${PY_SPACE_CLASS}]`, "gu");

// The first code point of every run of ten Unicode decimal digits (category Nd) in Python 3.11's
// Unicode 14.0, which is what `\d`, str.isdecimal() and int() accept. Spelled out rather than taken from
// the browser's own `\p{Nd}`, whose newer Unicode has more digits than the box's Python knows.
const DIGIT_ZEROS = [
  0x30, 0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66, 0xde6,
  0xe50, 0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90, 0x1b50,
  0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10, 0x104a0,
  0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650, 0x116c0, 0x11730,
  0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50, 0x1d7ce, 0x1d7d8, 0x1d7e2,
  0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0
];
const PY_DIGIT = `[${DIGIT_ZEROS.map((zero) => `\\u{${zero.toString(16)}}-\\u{${(zero + 9).toString(16)}}`).join("")}]`;

/** Python's str.strip() with no argument. A loop, not a regex: `\s+$` is quadratic on long runs. */
function pyStrip(text) {
  let start = 0;
  let end = text.length;
  while (start < end && PY_SPACE.test(text[start])) start += 1;
  while (end > start && PY_SPACE.test(text[end - 1])) end -= 1;
  return text.slice(start, end);
}

/** The number of code points in `text`: Python's len(). */
function pyLen(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

/** The UTF-16 index just after the first `count` code points of `text`: for Python's text[count:]. */
function pyOffset(text, count) {
  let index = 0;
  for (let seen = 0; seen < count && index < text.length; seen += 1) {
    index += text.codePointAt(index) > 0xffff ? 2 : 1;
  }
  return index;
}

/** The value of a Unicode decimal digit as Python's int() reads it, or -1 for any other character. */
function digitValue(char) {
  const point = char.codePointAt(0);
  for (const zero of DIGIT_ZEROS) {
    if (point >= zero && point <= zero + 9) return point - zero;
    if (point < zero) break;
  }
  return -1;
}

// What str.isdigit() accepts beyond the decimal digits (superscripts, circled digits, …), Python 3.11.
const OTHER_DIGITS = new RegExp(
  "^[\\u{b2}-\\u{b3}\\u{b9}\\u{1369}-\\u{1371}\\u{19da}\\u{2070}\\u{2074}-\\u{2079}\\u{2080}-\\u{2089}" +
    "\\u{2460}-\\u{2468}\\u{2474}-\\u{247c}\\u{2488}-\\u{2490}\\u{24ea}\\u{24f5}-\\u{24fd}\\u{24ff}" +
    "\\u{2776}-\\u{277e}\\u{2780}-\\u{2788}\\u{278a}-\\u{2792}\\u{10a40}-\\u{10a43}\\u{10e60}-\\u{10e68}" +
    "\\u{11052}-\\u{1105a}\\u{1f100}-\\u{1f10a}]$",
  "u",
);

/** Python's str.isdigit() for one character. */
function pyIsDigit(char) {
  return digitValue(char) >= 0 || OTHER_DIGITS.test(char);
}

/** Python's `text.isascii() and text.isdigit()`: the only plain codes a scanner sends. */
function asciiDigits(text) {
  return /^[0-9]+$/.test(text);
}

/** SQLite's NOCASE and Python's bytes.lower(): only A-Z fold, so "İ" or "ß" never match anything new. */
export function asciiLower(text) {
  return text.replace(/[A-Z]+/g, (upper) => upper.toLowerCase());
}

/** Python's ordering of str (by code point); JavaScript's `<` orders by UTF-16 unit, which differs for
 * characters above U+FFFF against U+E000..U+FFFF. Used to pick among SKUs that differ only in case. */
function comparePy(a, b) {
  const left = a[Symbol.iterator]();
  const right = b[Symbol.iterator]();
  for (;;) {
    const x = left.next();
    const y = right.next();
    if (x.done || y.done) return x.done === y.done ? 0 : x.done ? -1 : 1;
    const diff = x.value.codePointAt(0) - y.value.codePointAt(0);
    if (diff) return diff;
  }
}

// -- check digits, GTIN, UPC-E (biip.checksums, biip.gtin, biip.upc) ----------------------------------
/** GS1 standard check digit of a list of digit values (weights 3,1,... from the right). */
function checkDigit(values) {
  let sum = 0;
  for (let i = values.length - 1, weight = 3; i >= 0; i -= 1, weight = 4 - weight) sum += values[i] * weight;
  return (10 - (sum % 10)) % 10;
}

/** biip's Gtin.parse(value).as_gtin_14(), or null where it raises ParseError. `value` may hold any
 * script's decimal digits, as biip allows; leading zeros are only ever ASCII "0", as in its lstrip("0"). */
function gtin14(value) {
  const chars = Array.from(value);
  const length = chars.length;
  if (![8, 12, 13, 14].includes(length)) return null;
  const values = chars.map(digitValue);
  if (values.includes(-1)) return null;
  let zeros = 0;
  while (zeros < length && chars[zeros] === "0") zeros += 1;
  const significant = length - zeros;
  // biip's _strip_leading_zeros: keep a GTIN-12's zeros, then a GTIN-8's, else drop them all.
  let from = zeros;
  if ([12, 13, 14].includes(length) && significant >= 9 && significant <= 12) from = length - 12;
  else if (length >= 8 && significant <= 8) from = length - 8;
  const payload = chars.slice(from, -1);
  const check = values[length - 1];
  if (check !== checkDigit(values.slice(from, -1))) return null;
  return zfill14(payload.join("") + String(check));
}

/** Python's str.zfill(14), counting code points. */
function zfill14(text) {
  const missing = 14 - pyLen(text);
  return missing > 0 ? "0".repeat(missing) + text : text;
}

/** biip's Upc.parse(code).as_gtin_14() for an 8-digit UPC-E, or null where it raises. */
function upceGtin14(code) {
  if (code[0] !== "0" && code[0] !== "1") return null; // only number systems 0 and 1 have a UPC-E
  const last = Number(code[6]);
  const check = code[7];
  let upca;
  if (last <= 2) upca = `${code.slice(0, 3)}${last}0000${code.slice(3, 6)}${check}`;
  else if (last === 3) upca = `${code.slice(0, 4)}00000${code.slice(4, 6)}${check}`;
  else if (last === 4) upca = `${code.slice(0, 5)}00000${code[5]}${check}`;
  else upca = `${code.slice(0, 6)}0000${last}${check}`;
  const values = Array.from(upca, Number);
  if (values[11] !== checkDigit(values.slice(0, 11))) return null;
  return `00${upca}`;
}

/** hardware.barcodes._eight_digit: an 8-digit code is an EAN-8, a UPC-E, both (two GTINs), or neither. */
function eightDigit(code) {
  const readings = [];
  const values = Array.from(code, Number);
  if (values[7] === checkDigit(values.slice(0, 7))) readings.push([`000000${code}`, "ean8"]);
  const upce = upceGtin14(code);
  if (upce !== null && readings.every(([gtin]) => gtin !== upce)) readings.push([upce, "upce"]);
  return readings;
}

/** hardware.barcodes._gtin: a 12-, 13- or 14-digit code with a right check digit, padded to 14. */
function plainGtin(code) {
  const values = Array.from(code, Number);
  if (values[values.length - 1] !== checkDigit(values.slice(0, -1))) return [];
  return [[code.padStart(14, "0"), KIND_BY_LENGTH[code.length]]];
}

// -- GS1 element strings (biip.gs1_messages, biip.gs1_element_strings) --------------------------------
// biip's table of Application Identifiers, in its order: each AI's pattern is `^<ai><body>$`; the
// bodies are listed once and the AIs point at theirs. Copied from biip 5.2.0; the parity test compares
// this table with the installed biip's, so an upgrade that changes it fails until this is updated.
const AI_BODIES = [
  "(\\d{18})",
  "(\\d{14})",
  "([!%-?A-Z_a-z\\x22]{1,20})",
  "(\\d{2}(?:0\\d|1[0-2])(?:[0-2]\\d|3[01]))",
  "(\\d{2})",
  "([!%-?A-Z_a-z\\x22]{1,28})",
  "([!%-?A-Z_a-z\\x22]{1,30})",
  "(\\d{1,6})",
  "(\\d{13})([!%-?A-Z_a-z\\x22]{0,17})",
  "(\\d{13})(\\d{0,12})",
  "(\\d{0,8})",
  "(\\d{6})",
  "(\\d{1,8})",
  "(\\d{1,15})",
  "(\\d{3})(\\d{1,15})",
  "(\\d{4})",
  "(\\d{17})",
  "(\\d{13})",
  "(\\d{3})([!%-?A-Z_a-z\\x22]{1,9})",
  "(\\d{3})",
  "((?:\\d{3}){1,5})",
  "([!%-?A-Z_a-z\\x22]{1,3})",
  "((?:[!%-?A-Z_a-z\\x22]|%[0-9A-Fa-f][0-9A-Fa-f]%[0-9A-Fa-f][0-9A-Fa-f]){1,35})",
  "((?:[!%-?A-Z_a-z\\x22]|%[0-9A-Fa-f][0-9A-Fa-f]%[0-9A-Fa-f][0-9A-Fa-f]){1,70})",
  "([A-Z0-9]{2})",
  "(\\d{20})",
  "([01])",
  "(\\d{10})",
  "(\\d{6}[-]?)",
  "(\\d{0,4})",
  "([!%-?A-Z_a-z\\x22]{1,12})",
  "(\\d{6})(\\d{6})?",
  "([!%-?A-Z_a-z\\x22]{1,10})",
  "([!%-?A-Z_a-z\\x22]{1,2})",
  "(\\d{6})(\\d{4})?",
  "(\\d{3})([!%-?A-Z_a-z\\x22]{1,27})",
  "(\\d)([!%-?A-Z_a-z\\x22])([!%-?A-Z_a-z\\x22])([!%-?A-Z_a-z\\x22])",
  "([!%-?A-Z_a-z\\x22]{1,4})",
  "([!%-?A-Z_a-z\\x22]{3,30})",
  "([!%-?A-Z_a-z\\x22]{1,25})",
  "(\\d{4}(?:0\\d|1[0-2])(?:[0-2]\\d|3[01]))",
  "(\\d{4}(?:0\\d|1[0-2])(?:[0-2]\\d|3[01])(?:[01]\\d|2[0-3])(?:[0-5]\\d))",
  "(\\d{1})",
  "((?:[!%-?A-Z_a-z\\x22]|%[0-9A-Fa-f][0-9A-Fa-f]%[0-9A-Fa-f][0-9A-Fa-f]){1,40})",
  "((?:[!%-?A-Z_a-z\\x22]|%[0-9A-Fa-f][0-9A-Fa-f]%[0-9A-Fa-f][0-9A-Fa-f]){1,10})",
  "((?:[!%-?A-Z_a-z\\x22]|%[0-9A-Fa-f][0-9A-Fa-f]%[0-9A-Fa-f][0-9A-Fa-f]){1,90})",
  "(\\d[/]\\d)",
  "(\\d{4})(\\d{5})(\\d{3})(\\d{1})(\\d{1})",
  "(0)(\\d{13})([!%-?A-Z_a-z\\x22]{0,16})",
  "(\\d{14})(\\d{4})",
  "([!%-?A-Z_a-z\\x22]{1,34})",
  "(\\d{2}(?:0\\d|1[0-2])(?:[0-2]\\d|3[01])(?:[01]\\d|2[0-3]))((?:[0-5]\\d)(?:[0-5]\\d)?)?",
  "([!%-?A-Z_a-z\\x22]{1,50})",
  "([A-Z0-9/#-]{5,30})",
  "(\\d{1,12})",
  "(\\d{1,10})",
  "([0-9A-Za-z_-]{1,90})",
  "(\\d{15})",
  "(\\d{32})",
  "(\\d{18,20})",
  "([!%-?A-Z_a-z\\x22]{1,70})",
  "([!%-?A-Z_a-z\\x22]{1,90})",
];
const AI_ORDER = (
  "00:0 01:1 02:1 03:1 10:2 11:3 12:3 13:3 15:3 16:3 17:3 20:4 21:2 22:2 235:5 240:6 241:6 242:7 243:2 " +
  "250:6 251:6 253:8 254:2 255:9 30:10 3100:11 3101:11 3102:11 3103:11 3104:11 3105:11 3110:11 3111:11 " +
  "3112:11 3113:11 3114:11 3115:11 3120:11 3121:11 3122:11 3123:11 3124:11 3125:11 3130:11 3131:11 " +
  "3132:11 3133:11 3134:11 3135:11 3140:11 3141:11 3142:11 3143:11 3144:11 3145:11 3150:11 3151:11 " +
  "3152:11 3153:11 3154:11 3155:11 3160:11 3161:11 3162:11 3163:11 3164:11 3165:11 3200:11 3201:11 " +
  "3202:11 3203:11 3204:11 3205:11 3210:11 3211:11 3212:11 3213:11 3214:11 3215:11 3220:11 3221:11 " +
  "3222:11 3223:11 3224:11 3225:11 3230:11 3231:11 3232:11 3233:11 3234:11 3235:11 3240:11 3241:11 " +
  "3242:11 3243:11 3244:11 3245:11 3250:11 3251:11 3252:11 3253:11 3254:11 3255:11 3260:11 3261:11 " +
  "3262:11 3263:11 3264:11 3265:11 3270:11 3271:11 3272:11 3273:11 3274:11 3275:11 3280:11 3281:11 " +
  "3282:11 3283:11 3284:11 3285:11 3290:11 3291:11 3292:11 3293:11 3294:11 3295:11 3300:11 3301:11 " +
  "3302:11 3303:11 3304:11 3305:11 3310:11 3311:11 3312:11 3313:11 3314:11 3315:11 3320:11 3321:11 " +
  "3322:11 3323:11 3324:11 3325:11 3330:11 3331:11 3332:11 3333:11 3334:11 3335:11 3340:11 3341:11 " +
  "3342:11 3343:11 3344:11 3345:11 3350:11 3351:11 3352:11 3353:11 3354:11 3355:11 3360:11 3361:11 " +
  "3362:11 3363:11 3364:11 3365:11 3370:11 3371:11 3372:11 3373:11 3374:11 3375:11 3400:11 3401:11 " +
  "3402:11 3403:11 3404:11 3405:11 3410:11 3411:11 3412:11 3413:11 3414:11 3415:11 3420:11 3421:11 " +
  "3422:11 3423:11 3424:11 3425:11 3430:11 3431:11 3432:11 3433:11 3434:11 3435:11 3440:11 3441:11 " +
  "3442:11 3443:11 3444:11 3445:11 3450:11 3451:11 3452:11 3453:11 3454:11 3455:11 3460:11 3461:11 " +
  "3462:11 3463:11 3464:11 3465:11 3470:11 3471:11 3472:11 3473:11 3474:11 3475:11 3480:11 3481:11 " +
  "3482:11 3483:11 3484:11 3485:11 3490:11 3491:11 3492:11 3493:11 3494:11 3495:11 3500:11 3501:11 " +
  "3502:11 3503:11 3504:11 3505:11 3510:11 3511:11 3512:11 3513:11 3514:11 3515:11 3520:11 3521:11 " +
  "3522:11 3523:11 3524:11 3525:11 3530:11 3531:11 3532:11 3533:11 3534:11 3535:11 3540:11 3541:11 " +
  "3542:11 3543:11 3544:11 3545:11 3550:11 3551:11 3552:11 3553:11 3554:11 3555:11 3560:11 3561:11 " +
  "3562:11 3563:11 3564:11 3565:11 3570:11 3571:11 3572:11 3573:11 3574:11 3575:11 3600:11 3601:11 " +
  "3602:11 3603:11 3604:11 3605:11 3610:11 3611:11 3612:11 3613:11 3614:11 3615:11 3620:11 3621:11 " +
  "3622:11 3623:11 3624:11 3625:11 3630:11 3631:11 3632:11 3633:11 3634:11 3635:11 3640:11 3641:11 " +
  "3642:11 3643:11 3644:11 3645:11 3650:11 3651:11 3652:11 3653:11 3654:11 3655:11 3660:11 3661:11 " +
  "3662:11 3663:11 3664:11 3665:11 3670:11 3671:11 3672:11 3673:11 3674:11 3675:11 3680:11 3681:11 " +
  "3682:11 3683:11 3684:11 3685:11 3690:11 3691:11 3692:11 3693:11 3694:11 3695:11 37:12 3900:13 " +
  "3901:13 3902:13 3903:13 3904:13 3905:13 3906:13 3907:13 3908:13 3909:13 3910:14 3911:14 3912:14 " +
  "3913:14 3914:14 3915:14 3916:14 3917:14 3918:14 3919:14 3920:13 3921:13 3922:13 3923:13 3924:13 " +
  "3925:13 3926:13 3927:13 3928:13 3929:13 3930:14 3931:14 3932:14 3933:14 3934:14 3935:14 3936:14 " +
  "3937:14 3938:14 3939:14 3940:15 3941:15 3942:15 3943:15 3950:11 3951:11 3952:11 3953:11 3954:11 " +
  "3955:11 400:6 401:6 402:16 403:6 410:17 411:17 412:17 413:17 414:17 415:17 416:17 417:17 420:2 " +
  "421:18 422:19 423:20 424:19 425:20 426:19 427:21 4300:22 4301:22 4302:23 4303:23 4304:23 4305:23 " +
  "4306:23 4307:24 4308:6 4309:25 4310:22 4311:22 4312:23 4313:23 4314:23 4315:23 4316:23 4317:24 " +
  "4318:2 4319:6 4320:22 4321:26 4322:26 4323:26 4324:27 4325:27 4326:11 4330:28 4331:28 4332:28 " +
  "4333:28 7001:17 7002:6 7003:27 7004:29 7005:30 7006:11 7007:31 7008:21 7009:32 7010:33 7011:34 " +
  "7020:2 7021:2 7022:2 7023:6 7030:35 7031:35 7032:35 7033:35 7034:35 7035:35 7036:35 7037:35 7038:35 " +
  "7039:35 7040:36 7041:37 710:2 711:2 712:2 713:2 714:2 715:2 716:2 717:2 7230:38 7231:38 7232:38 " +
  "7233:38 7234:38 7235:38 7236:38 7237:38 7238:38 7239:38 7240:2 7241:4 7242:39 7250:40 7251:41 " +
  "7252:42 7253:43 7254:43 7255:44 7256:45 7257:23 7258:46 7259:43 8001:47 8002:2 8003:48 8004:6 " +
  "8005:11 8006:49 8007:50 8008:51 8009:52 8010:53 8011:54 8012:2 8013:39 8014:39 8017:0 8018:0 " +
  "8019:55 8020:39 8026:49 8030:56 8040:57 8041:57 8042:58 8043:59 8110:60 8111:15 8112:60 8200:60 " +
  "90:6 91:61 92:61 93:61 94:61 95:61 96:61 97:61 98:61 99:61 "
).trim();

const AIS = AI_ORDER.split(" ").map((entry) => {
  const [ai, body] = entry.split(":");
  const source = AI_BODIES[Number(body)];
  const unicode = source.replaceAll("\\d", PY_DIGIT); // biip's bodies never put \d inside [...]
  return {
    ai,
    pattern: `^${ai}${source}$`,
    // GS1Message.parse matches a prefix (pattern without "$"), parse_hri the whole element.
    prefix: new RegExp(`^${ai}${unicode}`, "u"),
    whole: new RegExp(`^${ai}${unicode}$`, "u"),
  };
});
const AI_NAMES = new Set(AIS.map(({ ai }) => ai));
// The AIs whose value biip reads as a date (and refuses when it is not a real one).
const DATE_AIS = new Set("11 12 13 15 16 17 4324 4325 4326 7003 7006 7007 7011 8008".split(" "));
const HRI_ELEMENT = new RegExp(`\\((${PY_DIGIT}+)\\)([^(]+)`, "gu");

/** biip's table as `[ai, pattern]` pairs, for the parity test (and for anyone curious). */
export function gs1Table() {
  return AIS.map(({ ai, pattern }) => [ai, pattern]);
}

/** GS1ApplicationIdentifier.extract: the first AI in table order that `value` starts with. */
function findAi(value) {
  return AIS.find(({ ai }) => value.startsWith(ai)) ?? null;
}

/** One element string from a match, or null where biip raises ParseError (only dates can fail after
 * the pattern matched: GTIN, GLN and SSCC errors are recorded by biip, not raised). */
function element(ai, match) {
  if (match === null) return null;
  const value = match.slice(1).filter((group) => group !== undefined).join("");
  if (DATE_AIS.has(ai.ai) && !validDate(value)) return null;
  return { ai: ai.ai, value };
}

/** biip's _parse_date_and_datetime succeeding: YYMMDD with a real month and day (00 = the month's last
 * day), then optional hour, minute, second pairs (99 99 = no time). Two-digit years are placed within
 * 49 years back and 50 forward of this year by the device's clock, as biip does by the box's. */
function validDate(value) {
  const digits = Array.from(value, digitValue);
  const pairs = [];
  for (let i = 0; i < digits.length; i += 2) {
    pairs.push(digits.slice(i, i + 2).reduce((number, digit) => number * 10 + digit, 0));
  }
  const current = new Date().getUTCFullYear();
  const century = current - (current % 100);
  const offset = pairs[0] - (current - century);
  let year = century + pairs[0];
  if (offset >= 51 && offset <= 99) year -= 100;
  else if (offset >= -99 && offset <= -50) year += 100;
  const month = pairs[1];
  if (month < 1 || month > 12) return false;
  const last = [31, leap(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
  const day = pairs[2] === 0 ? last : pairs[2];
  if (day < 1 || day > last) return false;
  if (pairs.length <= 3) return true;
  const [hour, minute = 0, second = 0] = pairs.slice(3);
  if (hour === 99 && minute === 99) return true;
  return hour <= 23 && minute <= 59 && second <= 59;
}

function leap(year) {
  return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
}

/** GS1Message.parse: element strings back to back, GS between them where a field is variable. */
function parseMessage(text) {
  const elements = [];
  let rest = pyStrip(text);
  while (rest) {
    const ai = findAi(rest);
    if (ai === null) return null;
    const found = element(ai, ai.prefix.exec(rest.split(GS, 1)[0]));
    if (found === null) return null;
    elements.push(found);
    rest = rest.slice(pyOffset(rest, pyLen(found.ai) + pyLen(found.value)));
    while (rest.startsWith(GS)) rest = rest.slice(1);
  }
  return elements;
}

/** GS1Message.parse_hri: "(01)…(10)…", whitespace anywhere ignored, text between elements skipped
 * (biip uses re.findall, which skips what does not match). */
function parseHri(text) {
  const hri = text.replace(PY_SPACES, "");
  if (!hri.startsWith("(")) return null;
  const matches = [...hri.matchAll(HRI_ELEMENT)];
  if (!matches.length) return null;
  const elements = [];
  for (const [, number, data] of matches) {
    if (!AI_NAMES.has(number)) return null;
    const value = `${number}${data}`;
    const ai = findAi(value);
    const found = element(ai, ai.whole.exec(value));
    if (found === null) return null;
    elements.push(found);
  }
  return elements;
}

/** hardware.barcodes._gs1_gtin: the GTIN-14 in AI (01), or [] when there is none or it is invalid. */
function gs1Gtin(code) {
  const elements = code.startsWith("(") ? parseHri(code) : parseMessage(code);
  const gtin = elements?.find(({ ai }) => ai.startsWith("01"));
  if (!gtin) return [];
  const value = gtin14(gtin.value);
  return value === null ? [] : [[value, "gtin14"]];
}

// -- the box's rules -----------------------------------------------------------------------------------
/**
 * Drop an AIM symbology identifier ("]E0", "]C1", "]d2", …) that a scanner may be set to prefix: a "]"
 * and any two characters, when something follows them. Exactly the box's `_strip_symbology`: it does
 * not trim, because the box trims before it and not after (so "]E0 123…" keeps its space, and fails).
 * @param {string} raw
 * @returns {string}
 */
export function stripSymbology(raw) {
  return raw.startsWith("]") && pyLen(raw) > 3 ? raw.slice(pyOffset(raw, 3)) : raw;
}

/**
 * Whether a scan is a GS1 element string rather than a plain code, by the box's test: it starts with
 * "(", carries a GS, or is more than 14 characters starting with two digits. The page can use it to tell
 * a person "this label is a GS1 code" before anything is looked up.
 * @param {string} raw
 * @returns {boolean}
 */
export function looksGs1(raw) {
  return gs1Shaped(stripSymbology(pyStrip(String(raw))));
}

/** hardware.barcodes._looks_gs1, on a code already trimmed and stripped of its symbology identifier
 * (and not trimmed again: "]E0\x85…" keeps its U+0085, which is no digit, as on the box). */
function gs1Shaped(code) {
  if (code.startsWith("(") || code.includes(GS)) return true;
  if (pyLen(code) <= 14) return false;
  const [first, second] = code;
  return pyIsDigit(first) && pyIsDigit(second);
}

/**
 * Every valid `[gtin14, kind]` reading of a scanned or typed code, in the box's order; `[]` when it is
 * not a valid barcode (it may still be a SKU). An 8-digit code can be both an EAN-8 and a UPC-E, so it
 * may give two readings, and the caller decides what that ambiguity means, as on the box.
 * @param {string} raw
 * @returns {Array<[string, string]>}
 */
export function interpretations(raw) {
  const code = stripSymbology(pyStrip(String(raw)));
  if (!code) return [];
  let readings;
  if (asciiDigits(code) && [8, 12, 13, 14].includes(code.length)) {
    readings = code.length === 8 ? eightDigit(code) : plainGtin(code);
  } else if (gs1Shaped(code)) {
    readings = gs1Gtin(code);
  } else {
    return [];
  }
  // One all-zero reading voids them all, as the box raises for the whole code.
  return readings.some(([gtin]) => gtin === NO_PRODUCT) ? [] : readings;
}

// -- resolving against the product master ----------------------------------------------------------------
/**
 * The product master as the handheld holds it offline, built from the box's catalog answer
 * (`GET /api/sync/catalog`, `products.catalog` on the box):
 * `{products: [{product_id, sku, name, …}], codes: [[gtin14, product_id], …]}`. It keeps
 * - `byCode`: gtin14 → product_id, only for codes whose product is in `products` (the box joins the two
 *   tables, so a code left pointing at no product finds nothing);
 * - `bySku`: sku → product_id;
 * - `bySkuFolded`: asciiLower(sku) → [[sku, product_id], …], for a SKU typed in another case;
 * - `byId`: product_id → the product as the catalog gave it, for names on the page.
 * The module's `resolve` takes this class or any object with the first three Maps.
 */
export class CatalogIndex {
  constructor({ products = [], codes = [] } = {}) {
    this.byId = new Map();
    this.bySku = new Map();
    this.bySkuFolded = new Map();
    for (const product of products) {
      const { product_id: productId, sku } = product;
      this.byId.set(productId, product);
      this.bySku.set(sku, productId);
      const folded = asciiLower(sku);
      if (!this.bySkuFolded.has(folded)) this.bySkuFolded.set(folded, []);
      this.bySkuFolded.get(folded).push([sku, productId]);
    }
    this.byCode = new Map();
    for (const [code, productId] of codes) if (this.byId.has(productId)) this.byCode.set(code, productId);
  }

  /** The product with this id, or undefined. */
  product(productId) {
    return this.byId.get(productId);
  }

  /** `resolve(raw, this)`: the box's answer for a scanned or typed code. */
  resolve(raw) {
    return resolve(raw, this);
  }
}

/**
 * What the box's `products.resolve_ids` answers for one code: `{product_id, matched_by}` where
 * matched_by is the kind of the first barcode reading that names a product, "sku", "ambiguous" (the
 * readings name two or more products; product_id null, the person must scan another barcode or type the
 * SKU) or "unmatched" (product_id null). Barcode readings come first: a code that is a valid barcode of
 * no product may still be a SKU. A SKU matches exactly first, then ignoring ASCII case, then the least
 * SKU in Python's order among several that differ only in case.
 * @param {string} raw
 * @param {{byCode: Map<string, string>, bySku: Map<string, string>,
 *           bySkuFolded: Map<string, Array<[string, string]>>}} index
 * @returns {{product_id: string|null, matched_by: string}}
 */
export function resolve(raw, index) {
  const text = pyStrip(String(raw));
  const hits = interpretations(text).filter(([gtin]) => index.byCode.has(gtin));
  const named = new Set(hits.map(([gtin]) => index.byCode.get(gtin)));
  if (named.size > 1) return { product_id: null, matched_by: "ambiguous" };
  if (hits.length) return { product_id: index.byCode.get(hits[0][0]), matched_by: hits[0][1] };
  const unmatched = { product_id: null, matched_by: "unmatched" };
  if (!text) return unmatched;
  if (index.bySku.has(text)) return { product_id: index.bySku.get(text), matched_by: "sku" };
  const candidates = [...(index.bySkuFolded.get(asciiLower(text)) ?? [])].sort(([a], [b]) => comparePy(a, b));
  return candidates.length ? { product_id: candidates[0][1], matched_by: "sku" } : unmatched;
}
