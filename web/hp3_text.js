// HP3: show the text reports of HP3 nodes on the node after a run (HP3 Model Info's description,
// the 3D Head Retarget and Head Encode reports). The nodes send them as `ui.text`; ComfyUI shows
// no text of its own, so this adds one read-only multiline text box per node, the way popular
// packs do. Works on the 2024 web UI and the 2025 frontend (both serve scripts/app.js and
// scripts/widgets.js). The box is never saved into workflows or prompts (serialize: false).
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES_WITH_TEXT = new Set(["HP3ModelInfo", "HP3HeadRetarget", "HP3HeadEncode"]);
const WIDGET_NAME = "hp3_report";

function showText(node, lines) {
  const text = (Array.isArray(lines) ? lines : [lines]).join("\n");
  let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET_NAME, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false;  // not in the workflow's widgets_values
    widget.options = { ...(widget.options || {}), serialize: false };  // not in the prompt
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.classList.add("hp3-report");
      widget.inputEl.style.opacity = 0.85;
    }
  }
  widget.value = text;
  if (widget.inputEl) widget.inputEl.value = text;
  // Grow the node so a few lines are readable without scrolling (about 15 px a line, at most 20).
  const size = node.computeSize();
  const lines_shown = Math.min(20, text.split("\n").length);
  node.setSize([Math.max(node.size[0], size[0], 380), Math.max(node.size[1], size[1] + 15 * lines_shown)]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "hp3.NodeText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES_WITH_TEXT.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) showText(this, message.text);
    };
  },
});
