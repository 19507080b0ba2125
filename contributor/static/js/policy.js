// The job contract's content policy (bim_core/content_policy.py, docs/content-policy.md):
// the input rules a node checks before computing. A node may decline a job that breaks
// them, with `job_failed` reason `content_policy:<rule>`; the registry runs the same check
// and, when it agrees, fails the job without counting it against the node.
//
// Pure, like ./protocol.js: runs under Node 20 for tests/js/. The registry only accepts
// patterns of a subset that means the same in JavaScript's RegExp and Python's `re`
// (case-insensitive); Python's check is the authority, so a pattern this engine cannot
// compile is skipped rather than guessed at.

const compiled = new Map();

function pattern(source) {
  if (!compiled.has(source)) {
    let re;
    try { re = new RegExp(source, "i"); } catch { re = null; }
    compiled.set(source, re);
  }
  return compiled.get(source);
}

/** The text a job's inputs carry: an embedding job's `texts`, a text job's `prompt`. */
export function inputTexts(inputs) {
  if (Array.isArray(inputs?.texts)) return inputs.texts.filter((t) => typeof t === "string");
  return typeof inputs?.prompt === "string" ? [inputs.prompt] : [];
}

// Python counts characters as code points; so does spreading a string.
const chars = (text) => [...text].length;

/** The first rule the inputs break as {rule, detail}, or null (no policy breaks none). */
export function inputViolation(policy, inputs) {
  if (policy === null || typeof policy !== "object" || Object.keys(policy).length === 0) return null;
  const rules = policy.input ?? {};
  const texts = inputTexts(inputs);
  const items = Array.isArray(inputs?.texts) ? inputs.texts.length : 1;
  if (Number.isInteger(rules.max_items) && items > rules.max_items) {
    return { rule: "input.max_items", detail: `${items} items; the policy allows ${rules.max_items}` };
  }
  const total = texts.reduce((sum, t) => sum + chars(t), 0);
  if (Number.isInteger(rules.max_chars) && total > rules.max_chars) {
    return { rule: "input.max_chars", detail: `${total} characters of input; the policy allows ${rules.max_chars}` };
  }
  const ceiling = policy.output?.max_tokens;
  if (Number.isInteger(ceiling) && Number.isInteger(inputs?.max_tokens) && inputs.max_tokens > ceiling) {
    return { rule: "output.max_tokens", detail: `max_tokens ${inputs.max_tokens}; the policy allows ${ceiling}` };
  }
  for (const rule of Array.isArray(rules.blocked) ? rules.blocked : []) {
    for (const source of Array.isArray(rule?.patterns) ? rule.patterns : []) {
      const re = typeof source === "string" ? pattern(source) : null;
      if (re && texts.some((t) => re.test(t))) {
        return { rule: String(rule.name), detail: `the input matches blocked rule '${rule.name}'` };
      }
    }
  }
  return null;
}
