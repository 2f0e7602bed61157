// What the whole console knows once a key is accepted: who the caller is and which base it talks to.
export const session = {
  role: null, // "super", "admin" or "api"
  canAdmin: false, // api keys may only read and predict
  model: null, // GET /v1/model
  get family() { return this.model === null ? null : this.model.family; }, // mlp, hf or causal_lm
  get textBase() { return this.model !== null && this.model.inputs === "texts"; },
};
