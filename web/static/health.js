// Shows the box's health on its landing page; everything comes from the box itself.
(async () => {
  const status = document.getElementById("status");
  const list = document.getElementById("health");
  try {
    const answer = await fetch("/api/health");
    const body = await answer.json();
    status.textContent = answer.ok ? "The box is running." : "The box reports a problem.";
    for (const [name, value] of Object.entries(body)) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = String(value);
      list.append(dt, dd);
    }
  } catch (error) {
    status.textContent = "The box does not answer: " + error;
  }
})();
