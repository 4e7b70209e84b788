// The Live tab of `whisper-at serve` (whisper_at/serve_live.py): the microphone, captured with
// the Web Audio API, goes to the server as 16-bit PCM at the browser's rate, a request every
// SEND_MS, each sent once the one before has returned (nothing lost, nothing reordered); each
// answer brings the new caption lines, the words that may still change and the sounds now.
// Runs as the gr.HTML's js_on_load: `element` is the tab's HTML, `server` its server functions.
const SEND_MS = 250;
const MAX_LINES = 5000;
const $ = (selector) => element.querySelector(selector);
const record = $(".wat-record"), stop = $(".wat-stop"), clear = $(".wat-clear");
const captions = $(".wat-captions"), now = $(".wat-now"), sounds = $(".wat-sounds");
let id = null, seq = 0, pending = [], sending = null, timer = null, media = null, context = null;

function status(text) { $(".wat-status").textContent = text; }

function show(view) {
  if (view.error) { status(view.error); return; }
  status(view.status);
  if (view.lines.length) {
    const lines = (captions.value ? captions.value.split("\n") : []).concat(view.lines);
    captions.value = lines.slice(-MAX_LINES).join("\n");
    captions.scrollTop = captions.scrollHeight;
  }
  now.value = view.now;
  sounds.value = view.sounds;
}

function base64(samples) {
  const bytes = new Uint8Array(samples.buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function send() {  // the audio captured since the last request, once that one has returned
  if (sending || !id || !pending.length) return sending;
  const size = pending.reduce((n, chunk) => n + chunk.length, 0);
  const samples = new Int16Array(size);
  let at = 0;
  for (const chunk of pending) { samples.set(chunk, at); at += chunk.length; }
  pending = [];
  sending = server.live_push([id, seq++, base64(samples)])
    .then((view) => { show(view); if (view.error) end(); })
    .catch((e) => status(`The server did not answer: ${e}`))
    .finally(() => { sending = null; });
  return sending;
}

function release() {
  clearInterval(timer);
  if (media) media.getTracks().forEach((track) => track.stop());
  if (context) context.close();
  media = context = timer = null;
}

function end() {  // the server has ended the recording (idle too long, or an error)
  release();
  id = null;
  pending = [];
  stop.disabled = true;
  record.disabled = false;
}

record.addEventListener("click", async () => {
  record.disabled = true;
  try {
    media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false,
               autoGainControl: false } });
  } catch (e) {
    status(`No microphone: ${e.message || e}. The browser asks for permission, and allows ` +
           "it only on https:// pages or on localhost.");
    record.disabled = false;
    return;
  }
  context = new AudioContext();
  let started;
  try {
    started = await server.live_start([$(".wat-model").value, $(".wat-gate").checked,
                                       context.sampleRate]);
  } catch (e) {
    started = { error: `The server did not answer: ${e}` };
  }
  if (started.error) { release(); status(started.error); record.disabled = false; return; }
  id = started.id;
  seq = 0;
  pending = [];
  if (captions.value) captions.value += "\n--- new recording ---";
  const source = context.createMediaStreamSource(media);
  const processor = context.createScriptProcessor(4096, 1, 1);
  processor.onaudioprocess = (event) => {
    const input = event.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(input.length);
    for (let i = 0; i < input.length; i++) {
      const x = Math.max(-1, Math.min(1, input[i]));
      pcm[i] = x < 0 ? x * 32768 : x * 32767;
    }
    pending.push(pcm);
  };
  source.connect(processor);
  processor.connect(context.destination);  // (silence) Chromium runs a processor only so
  timer = setInterval(send, SEND_MS);
  status("Listening…");
  stop.disabled = false;
});

stop.addEventListener("click", async () => {
  stop.disabled = true;
  clearInterval(timer);
  await new Promise((resolve) => setTimeout(resolve, 100));  // the last buffer in flight
  release();
  while (sending) await sending;
  await send();
  if (!id) return;  // ended meanwhile
  status("Stopping: committing the last words…");
  try { show(await server.live_stop([id])); } catch (e) { status(`The server did not answer: ${e}`); }
  end();
});

clear.addEventListener("click", () => { captions.value = now.value = sounds.value = ""; });
window.addEventListener("pagehide", release);
