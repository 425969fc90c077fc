// Running totals on the device: what the box held at the last pull, plus every event of this device made
// since (seq above the pull's head_seq), folded the way the box folds them. Never an expected quantity:
// the box does not send one to a verifier, and nothing here could show it.

export class Tally {
  constructor(resolve, pulled = null) {
    this.resolve = resolve; // code → {product_id, matched_by}
    this.items = new Map();
    this.unmatched = new Map();
    this.racks = new Map(); // rack_id → units this device scanned there
    this.scans = new Map(); // event_id → scan, for undo
    this.headSeq = 0;
    if (pulled) {
      this.headSeq = Number(pulled.head_seq ?? 0);
      for (const item of pulled.items ?? []) {
        const entry = this.item(item.product_id);
        entry.qty = Number(item.qty ?? 0);
        entry.damage = Number(item.damage_qty ?? 0);
        for (const serial of item.serials ?? []) entry.serials.set(typeof serial === "string" ? serial : serial.serial, []);
        Object.assign(entry.attrs, item.attributes ?? {});
        entry.photos = (item.photos ?? []).length;
        entry.name = item.name;
        entry.sku = item.sku;
      }
      for (const row of pulled.unmatched ?? []) this.unmatched.set(row.code, Number(row.qty));
    }
  }

  item(productId) {
    let entry = this.items.get(productId);
    if (!entry) {
      entry = { qty: 0, damage: 0, serials: new Map(), attrs: {}, photos: 0 };
      this.items.set(productId, entry);
    }
    return entry;
  }

  /** Fold one of this device's events. The pull already holds the session's counts up to its head_seq,
   * so only later events change them; the rack's units and the scans an undo may take back are this
   * device's own, which the pull does not break down, so every event counts for those. */
  apply(event) {
    const p = event.payload;
    const scan = event.type === "scan.recorded" || event.type === "scan.undone";
    const sign = event.type === "scan.undone" ? -1 : 1;
    if (scan) {
      this.racks.set(p.rack_id, (this.racks.get(p.rack_id) ?? 0) + sign * p.qty);
      if (sign > 0) this.scans.set(event.event_id, event);
      else this.scans.delete(p.undoes);
    }
    if (event.seq <= this.headSeq) return;
    switch (event.type) {
      case "scan.recorded":
      case "scan.undone": {
        const found = this.resolve(p.code);
        if (found.product_id) this.item(found.product_id).qty += sign * p.qty;
        else this.unmatched.set(p.code, (this.unmatched.get(p.code) ?? 0) + sign * p.qty);
        break;
      }
      case "count.adjusted":
        this.item(p.product_id).qty += p.delta;
        break;
      case "damage.adjusted":
        this.item(p.product_id).damage += p.delta;
        break;
      case "item.attributes_set":
        Object.assign(this.item(p.product_id).attrs, p.attrs);
        break;
      case "serial.added": {
        const tags = this.item(p.product_id).serials.get(p.serial) ?? [];
        this.item(p.product_id).serials.set(p.serial, [...tags, event.event_id]);
        break;
      }
      case "serial.removed":
        this.item(p.product_id).serials.delete(p.serial);
        break;
      case "photo.attached":
        this.item(p.product_id).photos += 1;
        break;
      default:
        break;
    }
  }

  get units() {
    let sum = 0;
    for (const entry of this.items.values()) sum += entry.qty;
    for (const qty of this.unmatched.values()) sum += qty;
    return sum;
  }

  get damaged() {
    let sum = 0;
    for (const entry of this.items.values()) sum += entry.damage;
    return sum;
  }

  get products() {
    let n = 0;
    for (const entry of this.items.values()) if (entry.qty > 0) n += 1;
    return n;
  }
}
