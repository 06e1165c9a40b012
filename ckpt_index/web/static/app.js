// ckpt-index serve: progressive enhancement only (the pages work without script).
// "/" focuses the filter box, as in many web apps; Escape leaves it.
"use strict";
document.addEventListener("keydown", (event) => {
  const box = document.getElementById("where");
  if (!box) return;
  if (event.key === "/" && document.activeElement !== box && !(event.target instanceof HTMLInputElement)) {
    event.preventDefault();
    box.focus();
    box.select();
  } else if (event.key === "Escape" && document.activeElement === box) {
    box.blur();
  }
});
