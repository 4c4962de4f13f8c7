// The page of hme-serve: a drawing pad (pointer events: mouse, touch, pen),
// upload / paste / drop of an image, and the call to POST /api/recognize.
'use strict';

const $ = (id) => document.getElementById(id);

// --- drawing pad -------------------------------------------------------------

const pad = $('pad');
const ctx = pad.getContext('2d');
const strokes = [];       // [{width, points: [[x, y], ...]}] in canvas pixels
let activeStroke = null;  // the stroke under the pointer that drew it
let activePointer = null;

function paintBackground() {
  // A white page: the PNG then has no transparency (which would read as black).
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, pad.width, pad.height);
}

function drawSegment(width, from, to) {
  ctx.strokeStyle = '#000';
  ctx.fillStyle = '#000';
  ctx.lineWidth = width;
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  if (from[0] === to[0] && from[1] === to[1]) {  // a dot
    ctx.beginPath();
    ctx.arc(to[0], to[1], width / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
}

function redraw() {
  paintBackground();
  for (const stroke of strokes) {
    const points = stroke.points;
    drawSegment(stroke.width, points[0], points[0]);
    for (let i = 1; i < points.length; i++) drawSegment(stroke.width, points[i - 1], points[i]);
  }
}

function canvasPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

function penWidthInCanvasPixels() {
  const box = pad.getBoundingClientRect();
  return Number($('pen-width').value) * pad.width / Math.max(box.width, 1);
}

pad.addEventListener('pointerdown', (event) => {
  if (activeStroke || (event.pointerType === 'mouse' && event.button !== 0)) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  activePointer = event.pointerId;
  const point = canvasPoint(event);
  activeStroke = {width: penWidthInCanvasPixels(), points: [point]};
  strokes.push(activeStroke);
  drawSegment(activeStroke.width, point, point);
  useDrawing();
});

pad.addEventListener('pointermove', (event) => {
  if (!activeStroke || event.pointerId !== activePointer) return;
  event.preventDefault();
  // Coalesced events keep fast pen strokes smooth.
  const coalesced = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const sample of (coalesced.length ? coalesced : [event])) {
    const point = canvasPoint(sample);
    const last = activeStroke.points[activeStroke.points.length - 1];
    activeStroke.points.push(point);
    drawSegment(activeStroke.width, last, point);
  }
});

function endStroke(event) {
  if (event.pointerId !== activePointer) return;
  activeStroke = null;
  activePointer = null;
}
pad.addEventListener('pointerup', endStroke);
pad.addEventListener('pointercancel', endStroke);

function undo() {
  if (activeStroke) return;
  strokes.pop();
  redraw();
}

function clearPad() {
  strokes.length = 0;
  activeStroke = null;
  redraw();
  useDrawing();
}

$('undo').addEventListener('click', undo);
$('clear').addEventListener('click', clearPad);
$('pen-width').addEventListener('input', () => {
  $('pen-width-value').textContent = $('pen-width').value;
});

// --- uploaded / pasted / dropped image ---------------------------------------

let uploaded = null;  // {blob, url, name} while an image (not the drawing) is the input

function useImage(blob, name) {
  if (!blob.type.startsWith('image/') && blob.type !== '') {
    showError(`"${name}" is not an image (${blob.type}).`);
    return;
  }
  if (uploaded) URL.revokeObjectURL(uploaded.url);
  uploaded = {blob, name, url: URL.createObjectURL(blob)};
  $('upload-preview').src = uploaded.url;
  $('upload-name').textContent = `${name} (${Math.ceil(blob.size / 1024)} KB)`;
  $('upload-view').hidden = false;
  pad.hidden = true;
  hideError();
}

function useDrawing() {
  if (!uploaded) return;
  URL.revokeObjectURL(uploaded.url);
  uploaded = null;
  $('upload-view').hidden = true;
  pad.hidden = false;
}

$('file').addEventListener('change', () => {
  const file = $('file').files[0];
  if (file) useImage(file, file.name);
  $('file').value = '';  // choosing the same file again fires 'change' again
});
$('back-to-drawing').addEventListener('click', useDrawing);

document.addEventListener('paste', (event) => {
  for (const item of event.clipboardData ? event.clipboardData.items : []) {
    if (item.kind === 'file' && item.type.startsWith('image/')) {
      event.preventDefault();
      useImage(item.getAsFile(), 'pasted image');
      return;
    }
  }
});

const surface = $('surface');
surface.addEventListener('dragover', (event) => {
  event.preventDefault();
  surface.classList.add('dragging');
});
surface.addEventListener('dragleave', () => surface.classList.remove('dragging'));
surface.addEventListener('drop', (event) => {
  event.preventDefault();
  surface.classList.remove('dragging');
  const file = event.dataTransfer.files[0];
  if (file) useImage(file, file.name);
});

// --- recognition -------------------------------------------------------------

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
}

function hideError() {
  $('error').hidden = true;
}

let renderedUrl = null;

function showResult(answer, roundTripMs) {
  $('result').hidden = false;
  $('latex').textContent = answer.latex;
  $('latex').classList.toggle('empty', !answer.latex);
  if (!answer.latex) $('latex').textContent = '(nothing recognised)';

  if (renderedUrl) URL.revokeObjectURL(renderedUrl);
  renderedUrl = null;
  const image = $('rendered');
  if (answer.svg) {
    renderedUrl = URL.createObjectURL(new Blob([answer.svg], {type: 'image/svg+xml'}));
    image.src = renderedUrl;
    image.hidden = false;
  } else {
    image.removeAttribute('src');
    image.hidden = true;
  }
  $('rendered-missing').hidden = Boolean(answer.svg) || !answer.latex;

  // What the model read (the server's normalised image): why a reading failed.
  const modelInput = $('model-input');
  if (answer.input) {
    modelInput.src = answer.input;
    $('model-input-figure').hidden = false;
  } else {
    modelInput.removeAttribute('src');
    $('model-input-figure').hidden = true;
  }

  const rows = $('alternatives');
  rows.replaceChildren();
  answer.alternatives.forEach((alternative, index) => {
    const row = rows.insertRow();
    row.insertCell().textContent = String(index + 1);
    const code = document.createElement('code');
    code.textContent = alternative.latex || '(empty)';
    row.insertCell().append(code);
    row.insertCell().textContent =
        alternative.score === null ? '–' : alternative.score.toFixed(3);
  });

  $('latency').textContent =
      `server ${answer.ms.toFixed(1)} ms · round trip ${roundTripMs.toFixed(0)} ms`;
}

async function currentImage() {
  if (uploaded) return uploaded.blob;
  if (!strokes.length) return null;
  return new Promise((resolve) => pad.toBlob(resolve, 'image/png'));
}

async function recognise() {
  const button = $('recognise');
  if (button.disabled) return;
  hideError();
  const image = await currentImage();
  if (!image) {
    showError('Draw a formula (or upload an image) first.');
    return;
  }
  button.disabled = true;
  button.textContent = 'Recognising…';
  const start = performance.now();
  try {
    // The server decodes the bytes to find out what they are: no type needed.
    const response = await fetch('/api/recognize?render=svg', {
      method: 'POST',
      headers: {'Content-Type': 'application/octet-stream'},
      body: image,
    });
    const roundTripMs = performance.now() - start;
    let answer;
    try {
      answer = await response.json();
    } catch {
      answer = {error: `The server answered HTTP ${response.status} without JSON.`};
    }
    if (!response.ok) {
      showError(answer.error || `HTTP ${response.status}`);
      return;
    }
    showResult(answer, roundTripMs);
  } catch (error) {
    showError(`Cannot reach the server: ${error.message}`);
  } finally {
    button.disabled = false;
    button.textContent = 'Recognise';
  }
}

$('recognise').addEventListener('click', recognise);

// --- copy, keys, health ------------------------------------------------------

async function copyLatex() {
  const text = $('latex').classList.contains('empty') ? '' : $('latex').textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Older browsers / no permission: copy through a selected text area.
    const area = document.createElement('textarea');
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand('copy');
    area.remove();
  }
  $('copy').textContent = 'Copied';
  setTimeout(() => { $('copy').textContent = 'Copy'; }, 1500);
}
$('copy').addEventListener('click', copyLatex);

document.addEventListener('keydown', (event) => {
  const mod = event.ctrlKey || event.metaKey;
  if (mod && event.key === 'Enter') {
    event.preventDefault();
    recognise();
  } else if (mod && event.key.toLowerCase() === 'z' && !uploaded) {
    event.preventDefault();
    undo();
  }
});

async function checkHealth() {
  const status = $('status');
  try {
    const response = await fetch('/healthz');
    const ok = response.ok;
    status.textContent = ok ? 'model ready' : 'model not ready';
    status.classList.toggle('ok', ok);
    status.classList.toggle('bad', !ok);
  } catch {
    status.textContent = 'server unreachable';
    status.classList.add('bad');
  }
}

redraw();
checkHealth();
