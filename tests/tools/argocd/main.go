// Loads one cluster the way Argo CD does (its settings manager's Secret informer and its
// database, which find the Secret labelled argocd.argoproj.io/secret-type=cluster by name and
// server and convert it into a Cluster, then the Cluster's own REST config) and makes
// requests to that cluster with it. Prints one JSON line: the server, the user the cluster
// sees, and the outcome of each request.
//
//	argocd-cluster --kubeconfig admin.kubeconfig --namespace argocd --name tenant [--list-in NS]...
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/argoproj/argo-cd/v3/util/db"
	"github.com/argoproj/argo-cd/v3/util/settings"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

type listIn []string

func (l *listIn) String() string     { return fmt.Sprint(*l) }
func (l *listIn) Set(v string) error { *l = append(*l, v); return nil }

type result struct {
	Server     string              `json:"server"`
	User       string              `json:"user,omitempty"`
	Groups     []string            `json:"groups,omitempty"`
	Extra      map[string][]string `json:"extra,omitempty"`
	Review     string              `json:"review"`
	ConfigMaps map[string]string   `json:"configMaps"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "the kubeconfig of the cluster Argo CD runs in")
	namespace := flag.String("namespace", "argocd", "the namespace Argo CD reads cluster Secrets from")
	name := flag.String("name", "", "the cluster's name (the Secret's key name)")
	var namespaces listIn
	flag.Var(&namespaces, "list-in", "list ConfigMaps in this namespace of the cluster (repeatable)")
	flag.Parse()
	if err := run(*kubeconfig, *namespace, *name, namespaces); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-cluster:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, namespace, name string, namespaces []string) error {
	home, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("reading %s: %w", kubeconfig, err)
	}
	clientset, err := kubernetes.NewForConfig(home)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argo := db.NewDB(namespace, settings.NewSettingsManager(ctx, clientset, namespace), clientset)
	servers, err := argo.GetClusterServersByName(ctx, name)
	if err != nil {
		return err
	}
	if len(servers) != 1 {
		return fmt.Errorf("%d clusters named %q in namespace %s", len(servers), name, namespace)
	}
	cluster, err := argo.GetCluster(ctx, servers[0])
	if err != nil {
		return err
	}
	config, err := cluster.RESTConfig()
	if err != nil {
		return fmt.Errorf("the REST config of cluster %q: %w", name, err)
	}
	target, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	out := result{Server: cluster.Server, ConfigMaps: map[string]string{}}
	review, err := target.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		out.Review = err.Error()
	} else {
		out.Review = "ok"
		out.User = review.Status.UserInfo.Username
		out.Groups = review.Status.UserInfo.Groups
		out.Extra = map[string][]string{}
		for k, v := range review.Status.UserInfo.Extra {
			out.Extra[k] = v
		}
	}
	for _, ns := range namespaces {
		if _, err := target.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{}); err != nil {
			out.ConfigMaps[ns] = err.Error()
		} else {
			out.ConfigMaps[ns] = "ok"
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
