// What a verifier hears, feels and sees on every scan, different for each outcome so that nobody has to
// look at the screen to know: accepted (one short high beep, one short buzz, green), unknown code (two
// low beeps, a long buzz, amber), conflict (a falling three-note tone, three buzzes, red). Sounds are
// made with WebAudio: no audio files to load, nothing from the internet.

const SOUNDS = {
  ok: [[1320, 0.07]],
  unknown: [[330, 0.12], [0, 0.06], [330, 0.12]],
  conflict: [[880, 0.1], [660, 0.1], [440, 0.22]],
  error: [[220, 0.3]],
};
const BUZZ = { ok: [35], unknown: [180, 80, 180], conflict: [90, 60, 90, 60, 260], error: [400] };

let audio = null;
export const settings = { sound: true, vibrate: true };

/** Browsers start audio only after a gesture: the first key or tap unlocks it. */
export function unlock() {
  if (!audio && "AudioContext" in self) audio = new AudioContext();
  if (audio?.state === "suspended") audio.resume().catch(() => {});
}

function beep(kind) {
  if (!settings.sound || !audio || audio.state !== "running") return;
  let at = audio.currentTime;
  for (const [frequency, seconds] of SOUNDS[kind]) {
    if (frequency) {
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      tone.type = "square";
      tone.frequency.value = frequency;
      gain.gain.setValueAtTime(0.12, at);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + seconds);
      tone.connect(gain).connect(audio.destination);
      tone.start(at);
      tone.stop(at + seconds);
    }
    at += seconds;
  }
}

const FLASH = { ok: ["#c9f2d5", 350], unknown: ["#ffe1a1", 600], conflict: ["#f7b9b4", 800], error: ["#f7b9b4", 800] };
const still = matchMedia("(prefers-reduced-motion: reduce)");

export function signal(kind, element = document.body) {
  beep(kind);
  if (settings.vibrate && navigator.vibrate) navigator.vibrate(BUZZ[kind]);
  element.dataset.flash = kind;
  // A Web Animation restarts on every scan without forcing a layout, as re-adding a CSS class would.
  const [colour, ms] = FLASH[kind];
  element.animate([{ backgroundColor: colour }, { backgroundColor: "transparent" }], { duration: still.matches ? 1 : ms });
}
