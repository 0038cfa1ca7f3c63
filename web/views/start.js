// The start form: a definition and its params (a JSON object).

export class StartForm {
  constructor(app, form) {
    this.app = app;
    this.form = form;
    this.select = form.querySelector("select[name=definition]");
    this.message = form.querySelector(".form-message");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  showMessage(text) {
    this.message.hidden = !text;
    this.message.textContent = text;
  }

  setDefinitions(definitions) {
    this.select.replaceChildren(...definitions.map((d) => new Option(`${d.name} (${d.steps.join(" → ")})`, d.name)));
    // Nothing to start: say how to define a job instead of a Start that can only fail.
    const none = definitions.length === 0;
    this.form.querySelector("button[type=submit]").disabled = none;
    this.select.disabled = none;
    this.form.querySelector(".no-definitions").hidden = !none;
  }

  async submit() {
    const form = this.form;
    if (!this.select.value) return;
    let params;
    try {
      params = JSON.parse(form.params.value || "{}");
    } catch (error) {
      this.showMessage(`Params are not valid JSON: ${error.message}`);
      return;
    }
    if (params === null || typeof params !== "object" || Array.isArray(params)) {
      this.showMessage("Params must be a JSON object, like {\"size\": 40}.");
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const id = await this.app.commands.start(this.select.value, params);
      this.showMessage("");
      this.app.list.open(id, { push: true });
    } catch (error) {
      this.showMessage(`Could not start the job: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }
}
