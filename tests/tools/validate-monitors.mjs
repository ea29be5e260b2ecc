// Validate ServiceMonitor and PodMonitor objects against the prometheus-operator CRD schemas (as compiled into
// the @kubernetes-models/prometheus-operator models). Reads a JSON array of objects on stdin and prints a JSON
// array with, for each, its validation error ("" when valid).
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = { ServiceMonitor, PodMonitor };
let input = "";
for await (const chunk of process.stdin) input += chunk;
const errors = JSON.parse(input).map((document) => {
  const Model = models[document.kind];
  if (!Model) return `no schema for kind ${document.kind}`;
  try {
    new Model(document).validate();
    return "";
  } catch (error) {
    return String(error.message ?? error);
  }
});
process.stdout.write(JSON.stringify(errors));
