// The published schemas our JSON and manifests must satisfy, as TypeScript types that `tsc --noEmit` checks
// object literals against (the tests write each document as a literal of one of these types: tsc then
// rejects a missing required field, a wrong type, a value outside an enumeration and, since the literal is
// fresh, any field the schema does not know).
//
// Grafana publishes its dashboard schema only as TypeScript types generated from its CUE kinds
// (@grafana/schema). Two adjustments make them check JSON:
// - a string enum's members are not assignable from plain strings, so Json<T> turns each enum into the union
//   of its values;
// - the schema leaves panel options, field config and queries open (Record<string, unknown>): here they are
//   typed by each panel plugin's own published schema (timeseries, stat), and Prometheus queries by the
//   fields Grafana's Prometheus data source reads (that schema is not published in @grafana/schema).

import type {
  AnnotationQuery,
  DataQuery,
  DataSourceRef,
  Dashboard,
  FieldConfig,
  FieldConfigSource,
  Panel,
  RowPanel,
} from "@grafana/schema";
import type * as Stat from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen";
import type * as TimeSeries from
  "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen";
import type { IPodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import type { IServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

/** T as JSON holds it: string enums become the unions of their values. */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Json<U>[]
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/** A Prometheus query as Grafana's Prometheus data source stores it in a panel. */
export interface PromQuery extends DataQuery {
  expr: string;
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  editorMode?: "code" | "builder";
  format?: "time_series" | "table" | "heatmap";
  interval?: string;
  exemplar?: boolean;
}

/** What Grafana's Prometheus annotation support reads beside the query (its processEvents). */
export interface PromAnnotation extends AnnotationQuery<PromQuery> {
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
}

type Fields<Custom> = Omit<FieldConfigSource, "defaults"> & {
  defaults: Omit<FieldConfig, "custom"> & { custom?: Partial<Custom> };
};

/** Every panel of ours names its data source and holds Prometheus queries. */
type QueryPanel = Omit<Panel, "type" | "options" | "fieldConfig" | "targets" | "datasource"> & {
  title: string;
  datasource: DataSourceRef;
  targets: PromQuery[];
};

export type TimeSeriesPanel = QueryPanel & {
  type: "timeseries";
  options: Partial<TimeSeries.Options>;
  fieldConfig: Fields<TimeSeries.FieldConfig>;
};

export type StatPanel = QueryPanel & {
  type: "stat";
  options: Partial<Stat.Options>;
  fieldConfig: Fields<Record<string, never>>;
};

export type CheckedDashboard = Json<
  Omit<Dashboard, "panels" | "annotations"> & {
    panels: Array<TimeSeriesPanel | StatPanel | RowPanel>;
    annotations: { list: Array<PromAnnotation | AnnotationQuery> };
  }
>;

export type CheckedServiceMonitor = Json<IServiceMonitor>;
export type CheckedPodMonitor = Json<IPodMonitor>;
