// The demo page: sends the chosen or dropped photo to POST /api/caption and shows the answer.
// Everything the server sends is put on the page as text (textContent), never as HTML.
"use strict";

const form = document.getElementById("upload");
const input = document.getElementById("image");
const statusLine = document.getElementById("status");
const errorLine = document.getElementById("error");
const result = document.getElementById("result");
const shown = document.getElementById("shown");
const shownLabel = document.getElementById("shown-label");
let photoUrl = null;

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

function showView(url, label) {
  shown.src = url;
  shownLabel.textContent = label;
}

function renderAnswer(answer) {
  show(document.getElementById("caption"), answer.caption || "(empty caption)");
  const beams = document.getElementById("beams");
  beams.replaceChildren(...answer.beams.map((beam) => {
    const item = document.createElement("li");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = beam.score.toFixed(3);
    item.append(beam.caption || "(empty)", score);
    return item;
  }));
  const attention = document.getElementById("attention");
  show(document.getElementById("attention-note"), answer.attention_note || "");
  attention.replaceChildren(...(answer.attention || []).map((url, index) => {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.className = "attention";
    image.src = url;
    image.alt = `attention of "${answer.words[index]}"`;
    const word = document.createElement("figcaption");
    word.textContent = answer.words[index];
    figure.append(image, word);
    figure.addEventListener("click", () => {
      attention.querySelectorAll("figure").forEach((other) => other.classList.remove("selected"));
      figure.classList.add("selected");
      showView(url, `where "${answer.words[index]}" looked`);
    });
    return figure;
  }));
  showView(photoUrl, answer.filename);
  result.hidden = false;
}

async function caption(file) {
  show(errorLine, "");
  result.hidden = true;
  show(statusLine, `Captioning ${file.name}…`);
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  const body = new FormData();
  body.append("image", file, file.name);
  try {
    const response = await fetch("/api/caption", { method: "POST", body });
    const text = await response.text();
    let answer;
    try {
      answer = JSON.parse(text);
    } catch {
      answer = { error: `the server answered ${response.status}: ${text.slice(0, 200)}` };
    }
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
    renderAnswer(answer);
  } catch (error) {
    show(errorLine, error.message);
  } finally {
    show(statusLine, "");
  }
}

input.addEventListener("change", () => {
  if (input.files.length) caption(input.files[0]);
  input.value = "";  // choosing the same file again captions it again
});
form.addEventListener("submit", (event) => event.preventDefault());
form.addEventListener("dragover", (event) => {
  event.preventDefault();
  form.classList.add("dragging");
});
form.addEventListener("dragleave", () => form.classList.remove("dragging"));
form.addEventListener("drop", (event) => {
  event.preventDefault();
  form.classList.remove("dragging");
  if (event.dataTransfer.files.length) caption(event.dataTransfer.files[0]);
});
