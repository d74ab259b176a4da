/*
 * trip_booking.c — the SDK's worked example.
 *
 * A trip is booked in four steps: reserve a flight, reserve a hotel, charge
 * the card, send a confirmation. The first three can be undone. Two trips
 * are booked:
 *   - Ada's card is fine: the saga completes. Her hotel's first attempt
 *     fails with a transient error, so it is retried after a backoff.
 *   - Bob's card is declined (a non-retryable error) at the third step, so
 *     the hotel and then the flight are compensated, newest first.
 * Each saga's timeline is read back from the event log and printed.
 *
 * Run it with no arguments to use the embedded PostgreSQL in ./.skald, or
 * set SKALD_DATABASE_URL to use a database of your own.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <skald/skald.h>

/* ---- handlers: each gets the step's input JSON and a stable idempotency
 *      key; a real one would pass the key to the booking service. ---- */

static int reserve_flight(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  char out[256];
  snprintf(out, sizeof(out), "{\"booking\": \"FL-%.8s\"}", t->saga_id);
  return sk_result_ok(r, out);
}

static int reserve_hotel(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  if (t->attempt == 1 && strstr(t->input, "\"Ada\"") != NULL)
    return sk_result_error(r, "HotelBusy", "the hotel API timed out", true);
  char out[256];
  snprintf(out, sizeof(out), "{\"booking\": \"HT-%.8s\"}", t->saga_id);
  return sk_result_ok(r, out);
}

static int charge_card(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  if (strstr(t->input, "\"declined\"") != NULL)
    return sk_result_error(r, "CardDeclined", "the card was declined", false);
  return sk_result_ok(r, "{\"charge\": \"CH-42\"}");
}

static int send_confirmation(const sk_task *t, sk_task_result *r, void *ud) {
  (void)t;
  (void)ud;
  return sk_result_ok(r, "{\"sent\": true}");
}

static int cancel_booking(const sk_task *t, sk_task_result *r, void *ud) {
  (void)ud;
  (void)t;
  return sk_result_ok(r, "{\"cancelled\": true}");
}

static int refund_card(const sk_task *t, sk_task_result *r, void *ud) {
  (void)t;
  (void)ud;
  return sk_result_ok(r, "{\"refunded\": true}");
}

/* ---- the workflow, built in code ---- */

static int build_workflow(sk_workflow **out) {
  sk_workflow *wf = NULL;
  int rc = sk_workflow_new("trip_booking", 1, &wf);
  if (rc != SK_OK)
    return rc;
  sk_retry retry;
  sk_retry_init(&retry);
  retry.max_attempts = 4;
  retry.initial_interval_ms = 50;
  retry.backoff_coefficient = 2.0;
  retry.max_interval_ms = 1000;
  retry.jitter = 0.2;
  const char *never[] = {"CardDeclined"};
  retry.non_retryable_errors = never;
  retry.n_non_retryable = 1;

  if ((rc = sk_workflow_set_description(wf, "Book flight, hotel and card; "
                                            "undo all on failure")) ||
      (rc = sk_workflow_set_default_retry(wf, &retry)) ||
      (rc = sk_workflow_add_step(wf, "reserve_flight", "flight.reserve")) ||
      (rc = sk_workflow_step_input(wf, "reserve_flight",
                                   "{\"traveller\": \"${input.traveller}\", "
                                   "\"to\": \"${input.to}\"}")) ||
      (rc = sk_workflow_step_compensate(
           wf, "reserve_flight", "booking.cancel",
           "{\"booking\": \"${steps.reserve_flight.output.booking}\"}")) ||
      (rc = sk_workflow_add_step(wf, "reserve_hotel", "hotel.reserve")) ||
      (rc = sk_workflow_step_input(wf, "reserve_hotel",
                                   "{\"guest\": \"${input.traveller}\", "
                                   "\"city\": \"${input.to}\"}")) ||
      (rc = sk_workflow_step_compensate(
           wf, "reserve_hotel", "booking.cancel",
           "{\"booking\": \"${steps.reserve_hotel.output.booking}\"}")) ||
      (rc = sk_workflow_add_step(wf, "charge_card", "card.charge")) ||
      (rc = sk_workflow_step_input(wf, "charge_card",
                                   "{\"card\": \"${input.card}\", "
                                   "\"saga\": \"${saga.id}\"}")) ||
      (rc = sk_workflow_step_compensate(wf, "charge_card", "card.refund",
                                        NULL)) ||
      (rc = sk_workflow_add_step(wf, "send_confirmation", "notify.email"))) {
    sk_workflow_free(wf);
    return rc;
  }
  *out = wf;
  return SK_OK;
}

/* ---- printing a saga's timeline from its event log ---- */

static void print_timeline(sk_engine *e, const char *id) {
  char *json = NULL;
  if (sk_saga_events_json(e, id, 0, &json) != SK_OK) {
    fprintf(stderr, "could not read the events of %s\n", id);
    return;
  }
  cJSON *events = cJSON_Parse(json);
  sk_free(json);
  const cJSON *steps = NULL;
  const cJSON *ev;
  cJSON_ArrayForEach(ev, events) {
    const cJSON *payload = cJSON_GetObjectItem(ev, "payload");
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "type"));
    const cJSON *step = cJSON_GetObjectItem(ev, "step");
    const cJSON *attempt = cJSON_GetObjectItem(ev, "attempt");
    if (type != NULL && strcmp(type, "SagaStarted") == 0)
      steps = cJSON_GetObjectItem(payload, "steps");
    const char *name = "";
    if (cJSON_IsNumber(step) && steps != NULL)
      name = cJSON_GetStringValue(cJSON_GetArrayItem(steps, step->valueint));
    const cJSON *detail = cJSON_GetObjectItem(payload, "error");
    if (detail == NULL)
      detail = cJSON_GetObjectItem(payload, "output");
    if (detail == NULL)
      detail = cJSON_GetObjectItem(payload, "delay_ms");
    char *d = detail != NULL ? cJSON_PrintUnformatted(detail) : NULL;
    char att[16] = "";
    if (cJSON_IsNumber(attempt))
      snprintf(att, sizeof(att), "#%d", attempt->valueint);
    printf("  %3d  %-22s %-18s %-4s %s\n",
           cJSON_GetObjectItem(ev, "seq")->valueint, type ? type : "?",
           name ? name : "", att, d != NULL ? d : "");
    free(d);
  }
  cJSON_Delete(events);
}

static int book(sk_engine *e, const char *input, const char *key,
                char id[SK_ID_LEN]) {
  sk_run_options ro = {.version = 1, .idempotency_key = key};
  sk_error err = {0};
  bool existed = false;
  int rc = sk_run_start(e, "trip_booking", input, &ro, id, &existed, &err);
  if (rc != SK_OK)
    fprintf(stderr, "could not start a trip: %s\n", err.message);
  return rc;
}

int main(void) {
  sk_engine_options o;
  sk_engine_options_init(&o);
  o.log_level = 1; /* warnings and errors only: keep the output readable */
  sk_engine *e = NULL;
  sk_error err = {0};
  printf("opening the engine (embedded PostgreSQL in ./.skald unless "
         "SKALD_DATABASE_URL is set)...\n");
  if (sk_engine_open(&o, &e, &err) != SK_OK) {
    fprintf(stderr, "could not open the engine: %s\n", err.message);
    return 1;
  }
  sk_workflow *wf = NULL;
  int rc = sk_engine_register_task(e, "flight.reserve", reserve_flight, NULL);
  rc = rc ? rc : sk_engine_register_task(e, "hotel.reserve", reserve_hotel, NULL);
  rc = rc ? rc : sk_engine_register_task(e, "card.charge", charge_card, NULL);
  rc = rc ? rc : sk_engine_register_task(e, "notify.email", send_confirmation, NULL);
  rc = rc ? rc : sk_engine_register_task(e, "booking.cancel", cancel_booking, NULL);
  rc = rc ? rc : sk_engine_register_task(e, "card.refund", refund_card, NULL);
  rc = rc ? rc : build_workflow(&wf);
  if (rc == SK_OK && (rc = sk_engine_register_workflow(e, wf, &err)) != SK_OK)
    fprintf(stderr, "could not register the workflow: %s (%s)\n", err.message,
            err.path);
  sk_workflow_free(wf);
  if (rc == SK_OK)
    rc = sk_engine_start(e);

  /* Keys make a re-run of the example start new trips; starting the same
   * key twice returns the first saga. */
  char k1[64], k2[64], ada[SK_ID_LEN], bob[SK_ID_LEN], again[SK_ID_LEN];
  snprintf(k1, sizeof(k1), "ada-%ld", (long)time(NULL));
  snprintf(k2, sizeof(k2), "bob-%ld", (long)time(NULL));
  rc = rc ? rc : book(e, "{\"traveller\": \"Ada\", \"to\": \"Lisbon\", "
                         "\"card\": \"ok\"}", k1, ada);
  rc = rc ? rc : book(e, "{\"traveller\": \"Bob\", \"to\": \"Oslo\", "
                         "\"card\": \"declined\"}", k2, bob);
  rc = rc ? rc : book(e, "{\"traveller\": \"Ada\"}", k1, again);
  if (rc == SK_OK)
    printf("starting Ada's trip again with the same key returned %s saga\n",
           strcmp(again, ada) == 0 ? "the same" : "ANOTHER");

  const char *ids[2] = {ada, bob};
  const char *who[2] = {"Ada", "Bob"};
  for (int i = 0; i < 2 && rc == SK_OK; i++) {
    sk_status st;
    rc = sk_saga_wait(e, ids[i], 30000, &st);
    if (rc != SK_OK) {
      fprintf(stderr, "saga %s did not settle: %s\n", ids[i], sk_strerror(rc));
      break;
    }
    printf("\n%s's trip, saga %s: %s\n", who[i], ids[i], sk_status_name(st));
    print_timeline(e, ids[i]);
  }
  sk_engine_close(e);
  return rc == SK_OK ? 0 : 1;
}
